/** choosePrimary: which writable host a node uses when the walk finds more than one (a split brain). */
import { describe, expect, test } from "bun:test";
import { choosePrimary, gather, parseStoreUrl, type Candidate } from "../../src/store/postgres-hosts";

const host = (label: string, timeline: number, system = "7001", started = `s-${label}`): Candidate => ({ label, system, timeline, started });

describe("choosePrimary", () => {
  test("one writable host: it, and nothing said", () => {
    expect(choosePrimary([host("a:1", 1)], null)).toEqual({ pick: 0, refused: [], split: null });
  });

  test("an old primary first in the list beside the promoted one: the newest timeline, and an ERROR naming both", () => {
    expect(choosePrimary([host("a:1", 1), host("b:2", 2)], null)).toEqual({
      pick: 1,
      refused: [],
      split: "Postgres: split brain: b:2 (timeline 2) and a:1 (timeline 1) both take writes; writing to b:2, the newest timeline; " +
        "a:1 must be fenced or rewound (pg_rewind) before it rejoins",
    });
  });

  test("a timeline older than one this node wrote to is refused, even alone", () => {
    expect(choosePrimary([host("a:1", 1)], { system: "7001", timeline: 2 })).toEqual({
      pick: null, refused: ["a:1: timeline 1, older than timeline 2 this node wrote to: if it is to be used all the same (rewound, or the newer one lost), restart mcq to accept it"], split: null,
    });
  });

  test("a system identifier not known (\"\": pg_control_system() not readable) is no other cluster, on either side (review 10a M2)", () => {
    expect(choosePrimary([host("a:1", 1, "")], { system: "7001", timeline: 1 })).toEqual({ pick: 0, refused: [], split: null });
    expect(choosePrimary([host("a:1", 1)], { system: "", timeline: 1 })).toEqual({ pick: 0, refused: [], split: null });
    expect(choosePrimary([host("a:1", 1, ""), host("b:2", 2)], null).pick).toBe(1);
    // Still refused: a known one of another system, and an older timeline.
    expect(choosePrimary([host("x:9", 1, "9999"), host("a:1", 1, "")], { system: "7001", timeline: 1 })).toEqual({
      pick: 1, refused: ["x:9: another cluster (system identifier 9999, not 7001 this node wrote to): if it replaced that one, restart mcq to accept it"], split: null,
    });
    expect(choosePrimary([host("a:1", 1, "")], { system: "", timeline: 2 }).pick).toBe(null);
  });

  test("the same server under two names is one server: no split brain", () => {
    expect(choosePrimary([host("localhost:5432", 3, "7001", "t0"), host("127.0.0.1:5432", 3, "7001", "t0")], null)).toEqual({ pick: 0, refused: [], split: null });
  });

  test("another cluster (system identifier) is refused: its timelines do not compare", () => {
    expect(choosePrimary([host("a:1", 1), host("x:9", 5, "9999")], null)).toEqual({
      pick: 0, refused: ["x:9: another cluster (system identifier 9999, not 7001)"], split: null,
    });
    expect(choosePrimary([host("x:9", 5, "9999"), host("a:1", 1)], { system: "7001", timeline: 1 }).pick).toBe(1);
  });

  test("two promoted on the same timeline: the first in the list, and the ERROR", () => {
    const r = choosePrimary([host("b:2", 2), host("c:3", 2)], { system: "7001", timeline: 1 });
    expect(r.pick).toBe(0);
    expect(r.split).toStartWith("Postgres: split brain: b:2 (timeline 2) and c:3 (timeline 2) both take writes; writing to b:2");
  });
});

describe("parseStoreUrl: the schema", () => {
  test("up to 59 characters: mcq_<schema>, its NOTIFY channel, fits Postgres's 63 bytes", () => {
    expect(parseStoreUrl(`postgres://h/db?schema=${"s".repeat(59)}`).schema).toBe("s".repeat(59));
  });
  test("60 characters or more is refused, saying why (it passed, then every set failed: channel name too long)", () => {
    for (const n of [60, 63, 64]) {
      expect(() => parseStoreUrl(`postgres://h/db?schema=${"s".repeat(n)}`)).toThrow(
        `--store: schema '${"s".repeat(n)}' is ${n} characters; at most 59 (mcq_<schema> names its NOTIFY channel, at most 63 bytes)`,
      );
    }
  });
  test("not an identifier: refused as before", () => {
    expect(() => parseStoreUrl("postgres://h/db?schema=Bad")).toThrow("--store: schema must be a lowercase identifier (a-z, 0-9, _), not 'Bad'");
  });
});

describe("gather: how long the walk waits for the other hosts", () => {
  const cand = (label: string, timeline: number): Candidate => ({ label, system: "7", timeline, started: "1" });
  const answer = (c: Candidate, ms: number) => new Promise<{ sql: never; url: string; c: Candidate }>((ok) => setTimeout(() => ok({ sql: null as never, url: c.label, c }), ms));
  const seen = { system: "7", timeline: 2 };
  const fits = (c: Candidate) => choosePrimary([c], seen).pick !== null;

  test("an old primary answering first, refused as older, does not cut the promoted one that answers 1.3 s later (review 11b F2)", async () => {
    const old = cand("a:1", 1);
    const promoted = cand("b:1", 2);
    const got = await gather(["a", "b"], (h) => (h === "a" ? answer(old, 0) : answer(promoted, 1300)), 1000, fits);
    expect(got.map((p) => ("c" in p ? p.c.label : p.reason))).toEqual(["a:1", "b:1"]);
  });

  test("once a host the walk would take has answered, another gets a second more, then counts as not answering", async () => {
    const t0 = performance.now();
    const got = await gather(["a", "b"], (h) => (h === "a" ? answer(cand("a:1", 2), 0) : new Promise(() => {})), 200, fits);
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(got.map((p) => ("c" in p ? p.c.label : p.reason))).toEqual(["a:1", "b: no answer within 200 ms of another host's"]);
  });
});
