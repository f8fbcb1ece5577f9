/**
 * Batches whose outcome stayed unknown (docs/design.md "A COMMIT with no answer"): their COMMIT
 * was sent, its answer did not come, and Postgres could not be asked within the timeout (down,
 * partitioned) or the backend could not be ended. Their clients got SERVER_ERROR, and the store
 * went on as if they had failed; but one may have landed, and then its plain gets consumed
 * messages whose replies never left. So such a batch is kept here (its xid, the server it ran on,
 * the rows its takes returned and the ids they opened) and asked about again until Postgres
 * answers: committed, what its takes took is given back (postgres-sql.ts giveBack: re-inserted by
 * id, leases ended, their counts undone, and the batch recorded as settled, in one statement);
 * rolled back, nothing left, nothing to do. The list is also written to the data directory, so a
 * node killed before it could ask again asks when it starts on that directory.
 */
import type { SQL } from "bun";
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Row, Statements } from "./postgres-sql";
import type { Tx } from "./postgres-send";
import type { StoreError } from "./store";

/** A batch whose COMMIT may or may not have landed. */
export interface Unresolved {
  xid: string;
  pid: number;
  /** The server and timeline it ran on (postgres-sql.ts identity), null if unknown. */
  server: string | null;
  /** The node whose leases its opens were. */
  node: number;
  /** The store it belongs to (URL without password, and schema): another store's is not asked about. */
  store: string;
  taken: Required<Row>[];
  leased: number[];
  /** Take statements that never answered: what they took, if it landed, is not known. */
  unanswered: number;
}

export interface UnknownDeps {
  st: Statements;
  node: number;
  timeoutMs: number;
  /** A connection of its own to the host in use. */
  side(): SQL;
  /** This node holds message `id` open now (a later open of it must not be ended). */
  holds(id: number): boolean;
  /** Messages came back to these queues: wake their waiters, read the counters again. */
  gaveBack(queues: string[]): Promise<void>;
  reason(e: unknown): StoreError;
  log(level: "info" | "warn", message: string): void;
  /** The data directory (the list's file is kept there), or null. */
  home: string | null;
  /** This store (Unresolved.store). */
  store: string;
  /** The file's bound in bytes (FILE_CAP if not given). */
  fileCap?: number;
}

const FILE = "postgres-unresolved.json";
/**
 * The file's bound in bytes (UnknownDeps.fileCap): about 12 MiB of bodies, written in about 0.3 s
 * on a loaded 2-core machine (measured: 25 ms per MiB); the event loop waits meanwhile.
 */
const FILE_CAP = 16 << 20;

/** Makes a rename in `dir` durable. */
function syncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export function createUnknown(d: UnknownDeps) {
  const file = d.home === null ? null : join(d.home, FILE);
  /** Batches of another store found in the file (the directory was started with another --store): kept in it, untouched. */
  let others: Unresolved[] = [];
  const list: Unresolved[] = load();
  let asking: Promise<void> | null = null;
  const texts = new WeakMap<Unresolved, Buffer>();
  const fileCap = d.fileCap ?? FILE_CAP;
  let quiet = false;

  /** What a node killed on this directory left unresolved (its bodies as base64). */
  function load(): Unresolved[] {
    if (file === null) return [];
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return []; // none: the usual case
      d.log("warn", `Postgres: cannot read ${file}: ${(e as Error).message}; the batches it names are not asked about`);
      return [];
    }
    try {
      let kept = JSON.parse(text) as Unresolved[];
      for (const u of kept) for (const r of u.taken) r.body = Buffer.from(r.body as unknown as string, "base64");
      others = kept.filter((u) => u.store !== d.store);
      if (others.length > 0) d.log("warn", `Postgres: ${file} names ${others.length} batches of unknown outcome of another store (${others[0]!.store}): left as they are`);
      kept = kept.filter((u) => u.store === d.store);
      if (kept.length > 0) d.log("warn", `Postgres: ${kept.length} batches of this directory's previous node have an unknown outcome: asking again`);
      return kept;
    } catch (e) {
      // Not overwritten by the next keep: moved aside for an operator to read (docs/design.md).
      const aside = `${file}.corrupt-${Date.now()}`;
      d.log("warn", `Postgres: ${file} is corrupt (${(e as Error).message}): moved to ${aside}; the batches it names are not asked about`);
      try {
        renameSync(file, aside);
      } catch (e2) {
        d.log("warn", `Postgres: cannot move ${file} aside: ${(e2 as Error).message}`);
      }
      return [];
    }
  }

  /**
   * Writes the list (synchronously: before the SERVER_ERROR leaves). Each entry is encoded once
   * (bodies as base64: JSON of a Buffer is an array of numbers, 5x the bytes and slow), and the
   * file holds entries up to `fileCap` bytes: one past it is kept in memory only, so that a batch
   * of large messages does not block the event loop for seconds. Returns the entries left out.
   */
  function save(): Unresolved[] {
    if (file === null) return [];
    if (list.length + others.length === 0) {
      rmSync(file, { force: true });
      return [];
    }
    const parts: Buffer[] = [];
    const left: Unresolved[] = [];
    let size = 2;
    for (const u of [...list, ...others]) {
      // Its bodies' base64 alone past the bound: not even encoded (that alone took seconds for 64 MiB).
      if (size + u.taken.reduce((n, r) => n + Math.ceil(r.body.byteLength / 3) * 4, 0) > fileCap) {
        left.push(u);
        continue;
      }
      const bytes = encoded(u);
      if (size + bytes.length + 1 > fileCap) left.push(u);
      else parts.push(bytes), (size += bytes.length + 1);
    }
    // Written in parts (one string of them all costs more than the encoding) and synced, file and
    // directory: the list must outlive a crash of the machine, as the batches it names may have.
    const fd = openSync(`${file}.tmp`, "w");
    try {
      parts.forEach((bytes, i) => {
        writeSync(fd, i === 0 ? "[" : ",");
        writeSync(fd, bytes);
      });
      writeSync(fd, parts.length === 0 ? "[]" : "]");
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(`${file}.tmp`, file);
    syncDir(dirname(file));
    return left;
  }

  /** An entry as JSON, its bodies as base64; encoded once (every keep and settle writes the list). */
  function encoded(u: Unresolved): Buffer {
    let bytes = texts.get(u);
    if (bytes === undefined) {
      const taken = u.taken.map((r) => ({ ...r, body: Buffer.from(r.body.buffer, r.body.byteOffset, r.body.byteLength).toString("base64") }));
      texts.set(u, (bytes = Buffer.from(JSON.stringify({ ...u, taken }))));
    }
    return bytes;
  }

  /** Keeps a batch whose outcome stays unknown, if its takes took anything. */
  function keep(tx: Tx): void {
    if (tx.xact === null) return; // no take answered (answers come in order): nothing known to give back
    if (tx.taken.length === 0 && tx.leased.length === 0 && tx.unanswered === 0) return; // sets stand either way
    const { xid, pid } = tx.xact;
    const u: Unresolved = { xid, pid, server: tx.server, node: d.node, store: d.store, taken: tx.taken, leased: tx.leased, unanswered: tx.unanswered };
    list.push(u);
    try {
      if (save().includes(u)) d.log("warn", `Postgres: ${file} would pass ${fileCap} bytes: transaction ${xid} is asked about again only while this node runs`);
    } catch (e) {
      d.log("warn", `Postgres: cannot write ${file}: ${(e as Error).message}; transaction ${xid} is asked about again only while this node runs`);
    }
    d.log("warn", `Postgres: transaction ${xid} (${tx.taken.length} messages taken, ${tx.leased.length} opened) is asked about again once Postgres answers`);
  }

  /** Asks about every kept batch, once at a time, bounded by the timeout; what is not settled stays. */
  function ask(): Promise<void> {
    if (list.length === 0 || asking !== null) return asking ?? Promise.resolve();
    const side = d.side();
    // A run cut off by the timeout may still be waiting (a give-back's refresh) when the next run
    // starts: once stopped it touches the list no more, or both would settle the same entry.
    const run = { stopped: false };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, fail) => {
      timer = setTimeout(() => {
        run.stopped = true;
        fail(new Error(`no answer within ${d.timeoutMs} ms`));
      }, d.timeoutMs);
    });
    asking = Promise.race([askAll(side, run), late])
      .then(
        () => void (quiet = false),
        (e) => {
          if (!quiet) d.log("warn", `Postgres: asking about ${list.length} batches of unknown outcome: ${d.reason(e).message}; asking again later`);
          quiet = true;
        },
      )
      .finally(() => {
        clearTimeout(timer);
        void side.close({ timeout: 0 }).catch(() => {});
        asking = null;
      });
    return asking;
  }

  async function askAll(side: SQL, run: { stopped: boolean }): Promise<void> {
    const here = await d.st.identity(side);
    for (const u of [...list]) {
      if (run.stopped) return;
      const landed = await outcome(side, here, u);
      if (landed === null || run.stopped) continue; // still in progress (asked again later), or cut off
      if (landed === "committed" || landed === "by rows") await giveBack(side, u, landed);
      else d.log("info", `Postgres: transaction ${u.xid} had been rolled back: its messages never left their queues`);
      if (run.stopped) return; // a later run settles it again ("given back already": recorded as settled)
      const i = list.indexOf(u);
      if (i < 0) continue; // settled meanwhile by another run
      list.splice(i, 1);
      save();
    }
  }

  /**
   * Whether the batch committed. Its xid is only asked about on the server and timeline it ran
   * on: after a failover, the new primary may have given that number to another transaction, or
   * not reached it yet. Elsewhere, or if the server cannot say (no record left of so old an xid),
   * the rows decide: a give-back re-inserts only the taken rows no longer in the table, and ends
   * only leases this node still has and no session holds.
   */
  async function outcome(side: SQL, here: string | null, u: Unresolved): Promise<"committed" | "aborted" | "by rows" | null> {
    if (here === null || u.server !== here) return "by rows";
    const status = await d.st.resolve(side, u.xid, u.pid, d.timeoutMs, here);
    if (status === "in progress") return null;
    return status === "committed" ? "committed" : status === "aborted" ? "aborted" : "by rows";
  }

  async function giveBack(side: SQL, u: Unresolved, why: "committed" | "by rows"): Promise<void> {
    const key = `${u.server ?? `node ${u.node}`}/${u.xid}`;
    const leased = u.leased.filter((id) => !d.holds(id));
    const r = await d.st.giveBack(side, key, d.node, u.node, u.taken, leased);
    if (r.queues !== null) await d.gaveBack(r.queues); // before saying so: the counters read after say it too
    const how = why === "committed" ? "had committed" : `cannot be asked about on this server (${u.server === null ? "unknown server" : "another server or timeline"})`;
    if (r.settled === 0) d.log("info", `Postgres: transaction ${u.xid} ${how}: given back already`);
    else d.log("warn", `Postgres: transaction ${u.xid} ${how}: gave back ${r.back} messages taken and ${r.released} opened`);
    if (u.unanswered > 0 && why === "committed") {
      d.log("warn", `Postgres: transaction ${u.xid} had committed, and ${u.unanswered} of its take statements never answered: what they took is gone`);
    }
  }

  return {
    keep,
    ask,
    /** Batches kept, not yet settled. */
    pending: () => list.length,
  };
}
