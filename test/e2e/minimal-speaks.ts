/**
 * The exchange both minimal bench servers (scripts/bench/minimal.ts, minimal-durable.ts) must speak
 * byte for byte: mcbench's pair subset, a request split anywhere (even inside its body), and ERROR
 * for anything else.
 */
import { expect } from "bun:test";
import { Client, set, value } from "./harness";

export async function speaksPair(port: number): Promise<void> {
  const c = await Client.connect(port);
  c.write(set("q", "one", 7) + set("q", "two") + "get q\r\nget q\r\nget q\r\nget other\r\nstats\r\n");
  const expected = "STORED\r\nSTORED\r\n" + value("q", "one", 7) + "END\r\n" + value("q", "two") + "END\r\nEND\r\nEND\r\nERROR\r\n";
  expect((await c.read(expected.length)).toString("latin1")).toBe(expected);
  const request = set("split", "x".repeat(100)) + "get split\r\n";
  for (let i = 0; i < request.length; i += 7) c.write(request.slice(i, i + 7));
  const reply = "STORED\r\n" + value("split", "x".repeat(100)) + "END\r\n";
  expect((await c.read(reply.length)).toString("latin1")).toBe(reply);
  c.close();
}
