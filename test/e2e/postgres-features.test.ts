/**
 * Issue 12 on the Postgres store (MCQ_TEST_PG, see test/pg.ts): what it does with the queue
 * features. Limits and fanout work as on SQLite; delays, idempotent sets, redrive and dead letters
 * are not there yet, and say so plainly instead of acting as a plain set or a plain abort.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { dropSchemas, freshSchema, havePostgres, pgStoreUrl } from "../pg";
import { runCommand, set, startServer, stopAll, tempDir, value } from "./harness";

const schemas: string[] = [];
const store = () => {
  const schema = freshSchema("feat");
  schemas.push(schema);
  return pgStoreUrl(schema);
};

afterAll(async () => {
  await stopAll();
  await dropSchemas(schemas);
});

if (havePostgres("issue 12 on Postgres")) {
  describe("issue 12 on Postgres", () => {
    test("limits and fanout work; delays, tokens and redrive answer SERVER_ERROR and store nothing", async () => {
      const server = await startServer(["--store", store(), "--max-items", "2", "--fanout"], join(tempDir(), "data"));
      const c = await server.connect();
      expect(await c.call("get f+x\r\n" + set("f", "1") + set("f", "2") + set("f", "3"))).toBe(
        "END\r\nSTORED\r\nSTORED\r\nSERVER_ERROR queue full\r\n",
      );
      expect(await c.call("get f+x\r\nget f+x\r\nget f+x\r\n")).toBe(value("f+x", "1") + "END\r\n" + value("f+x", "2") + "END\r\nEND\r\n");
      expect(await c.call("set d/delay=10 0 0 1\r\na\r\nset d/id=t 0 0 1\r\nb\r\nredrive a b\r\nget d\r\n")).toBe(
        "SERVER_ERROR this store does not support delays (delay=)\r\n" +
          "SERVER_ERROR this store does not support idempotent sets (id=)\r\n" +
          "SERVER_ERROR this store does not support redrive\r\nEND\r\n",
      );
      await c.call(set("r", "x"));
      expect(await c.call("get r/open\r\nget r/abort/delay=10\r\nget r/close\r\n")).toBe(
        value("r/open", "x") + "END\r\nSERVER_ERROR this store does not support delays (delay=)\r\nEND\r\n",
      );
      await server.kill();
    });

    test("max_deliveries stops the start with a clear message, exit 1", async () => {
      const r = await runCommand(["--store", store(), "--max-deliveries", "3", "-p", "0", "-H", join(tempDir(), "data")]);
      expect([r.code, r.stderr.trim().split("\n").pop()]).toEqual([1, "mcq: max_deliveries (dead letters) is not supported by the Postgres store yet"]);
    });
  });
}
