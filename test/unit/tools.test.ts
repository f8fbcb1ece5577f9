/** The pieces of the tools that need no process: suggestions, the line splitter, progress. */
import { expect, test } from "bun:test";
import { suggest } from "../../src/suggest";
import { lines, parseLine } from "../../src/tools/format";
import { progress } from "../../src/tools/output";

test("suggest: the closest word within a third of its letters, or nothing", () => {
  const words = ["check", "dump", "load", "stats", "help"];
  expect(suggest("chek", words)).toBe(" (did you mean check?)");
  expect(suggest("dupm", words)).toBe(" (did you mean dump?)"); // a swap is one edit
  expect(suggest("stat", words)).toBe(" (did you mean stats?)");
  expect(suggest("frobnicate", words)).toBe("");
  expect(suggest("x", words)).toBe("");
});

test("lines: split across chunks, a character cut between two chunks, no final newline", async () => {
  const text = "a\né\n\nlast";
  const bytes = new TextEncoder().encode(text);
  for (let cut = 0; cut <= bytes.length; cut++) {
    async function* chunks() {
      yield bytes.subarray(0, cut);
      yield bytes.subarray(cut);
    }
    const got: string[] = [];
    for await (const line of lines(chunks())) got.push(line);
    expect(got).toEqual(["a", "é", "", "last"]);
  }
});

test("parseLine: each kind of line, and a reason naming the line for a bad one", () => {
  expect(parseLine('{"type":"end","queues":1,"messages":2}', 9)).toEqual({ type: "end", queues: 1, messages: 2 });
  const bad = (text: string) => {
    try {
      parseLine(text, 7);
    } catch (e) {
      return (e as Error).message;
    }
    return "accepted";
  };
  expect(bad('{"type":"dump","format":3,"id":"x","created":1,"mcq":"9","lastId":0}')).toBe("mcq load: line 7: dump format 3; this mcq reads formats 1 to 2");
  expect(bad('{"type":"token","queue":"q","token":"a/b","until":1}')).toBe("mcq load: line 7: bad token");
  expect(bad('{"type":"message","queue":"q","flags":0,"created":1,"expires":0,"body":"","due":-1}')).toBe("mcq load: line 7: bad due or deliveries");
  expect(bad('{"type":"dump","format":1,"id":"","created":1,"mcq":"9","lastId":0}')).toBe("mcq load: line 7: bad dump id");
  expect(bad('{"type":"message","queue":"q","id":-1,"flags":0,"created":1,"expires":0,"body":""}')).toBe("mcq load: line 7: bad message id");
  expect(bad('{"type":"message","queue":"q","flags":0,"created":1,"expires":0,"body":"!!"}')).toBe("mcq load: line 7: body is not base64");
  const msg = (extra: object) => JSON.stringify({ type: "message", queue: "q", flags: 0, created: 1, expires: 0, body: "", ...extra });
  expect(bad(msg({ deliveries: 2 ** 31 }))).toBe("mcq load: line 7: bad due or deliveries");
  expect(bad(msg({ deliveries: 2 ** 31 - 1 }))).toBe("accepted");
  expect(bad(msg({ due: Date.now() + 32 * 86_400_000 }))).toBe("mcq load: line 7: due is more than 31 days from now (a delay is at most 30 days)");
  expect(bad(msg({ due: Date.now() + 30 * 86_400_000 }))).toBe("accepted");
  // Base64 that encoding no bytes gives: a length that cannot be, bits past the last byte, padding that does not fit.
  for (const body of ["Q", "QUJDR", "QR==", "QUJ=", "QQ=", "QUJDRA="]) expect(bad(msg({ body }))).toBe("mcq load: line 7: body is not whole base64 (cut short or altered)");
  for (const body of ["QUJD", "QUJDRA==", "QUJDRA", "QUI=", "QQ=="]) expect(bad(msg({ body }))).toBe("accepted");
  expect(bad("[1]")).toBe('mcq load: line 7: unknown type undefined');
  expect(bad("{")).toBe("mcq load: line 7: not JSON");
});

test("progress: rewritten in place on a terminal, cleared at the end; nothing elsewhere", () => {
  const tty: string[] = [];
  const shown = progress("loaded", true, (t) => tty.push(t));
  shown.count(1);
  shown.count(2); // within 200 ms of the first: not shown
  shown.done();
  expect(tty).toEqual(["\rloaded 1 messages…", "\r\x1b[K"]);
  const piped: string[] = [];
  const quiet = progress("loaded", false, (t) => piped.push(t));
  quiet.count(1);
  quiet.done();
  expect(piped).toEqual([]);
});
