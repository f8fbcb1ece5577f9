/** The Postgres store refuses a server older than 14 (pg_current_xact_id, pg_xact_status, pg_terminate_backend with a timeout), saying which it is. */
import { describe, expect, test } from "bun:test";
import { checkVersion } from "../../src/store/postgres-hosts";
import { StoreError } from "../../src/store/store";

describe("checkVersion (server_version_num)", () => {
  test("14 and later are accepted", () => {
    for (const n of [140000, 140019, 150018, 170002]) expect(() => checkVersion(n, "db1:5432")).not.toThrow();
  });
  test("older servers are refused with a StoreError naming the host and the version", () => {
    const cases: [number, string][] = [[130016, "13.16"], [120022, "12.22"], [100023, "10.23"], [90624, "9.6.24"], [NaN, "unknown"]];
    for (const [n, v] of cases) {
      expect(() => checkVersion(n, "db1:5432")).toThrow(new StoreError(`Postgres: db1:5432 runs version ${v}; mcq needs Postgres 14 or later`));
    }
  });
});
