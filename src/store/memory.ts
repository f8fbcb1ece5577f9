/**
 * A QueueStore in memory: the reference the contract suite holds the SQLite store to,
 * and a store for command-layer tests. A batch is undone by restoring a snapshot taken
 * at its first change, which is simple and fine at test sizes.
 */
import type { FeatureCounter, FeatureCounts, Message, QueueCounters, QueueDetail, QueueSummary, SyncQueueStore } from "./store";

interface Entry extends Omit<Message, "expires"> {
  created: number;
  expiresAt: number;
  opened: boolean;
  /** When a delayed message may be handed out (ms); 0 once it may (store.ts, Delays). */
  due: number;
  /** Times it was opened (dead letters). */
  deliveries?: number;
}

interface Queue {
  total: number;
  fetched: number;
  entries: Entry[];
  /** Copied with the queue by change(), so a rollback undoes a count as it undoes a set. */
  features: FeatureCounts;
}

const noFeatures = (): FeatureCounts => ({ deduplicated: 0, discarded: 0, deadLettered: 0, deadLetterSkipped: 0, fanoutRefused: 0 });
const newQueue = (): Queue => ({ total: 0, fetched: 0, entries: [], features: noFeatures() });

export function createMemoryStore(): SyncQueueStore {
  let queues = new Map<string, Queue>();
  let lastId = 0;
  let expired = 0;
  /** Idempotency tokens ("<queue>\n<token>", a byte no name has) and the end of their window. */
  let tokens = new Map<string, number>();
  let snapshot: { queues: Map<string, Queue>; lastId: number; expired: number; tokens: Map<string, number> } | null = null;

  function change(): void {
    if (snapshot !== null) return;
    const copy = new Map<string, Queue>();
    for (const [name, q] of queues) copy.set(name, { ...q, entries: q.entries.map((e) => ({ ...e })), features: { ...q.features } });
    snapshot = { queues: copy, lastId, expired, tokens: new Map(tokens) };
  }

  /** Moves q's due delayed messages to its tail, by due time then arrival, with new ids. */
  function promote(q: Queue, now: number, limit = Infinity): number {
    const due = q.entries.filter((e) => e.due > 0 && e.due <= now).sort((a, b) => a.due - b.due || a.id - b.id);
    if (due.length === 0) return 0;
    change(); // the entries are the snapshot's copies from here on: find them again
    const ids = new Set(due.slice(0, limit).map((e) => e.id));
    const moved = q.entries.filter((e) => ids.has(e.id)).sort((a, b) => a.due - b.due || a.id - b.id);
    q.entries = q.entries.filter((e) => !ids.has(e.id));
    for (const e of moved) q.entries.push({ ...e, id: ++lastId, due: 0 });
    return moved.length;
  }

  /** Index of the first message that may be handed out; expired ones on the way are deleted. */
  function firstLive(q: Queue, now: number): number {
    promote(q, now);
    for (let i = 0; i < q.entries.length; i++) {
      const e = q.entries[i]!;
      if (e.opened || e.due > 0) continue;
      if (e.expiresAt === 0 || e.expiresAt > now) return i;
      change();
      q.entries.splice(i--, 1);
      expired++;
    }
    return -1;
  }

  function enqueue(name: string, flags: number, body: Uint8Array, expiresAt: number, now: number, due: number): number {
    change();
    let q = queues.get(name);
    if (q === undefined) queues.set(name, (q = newQueue()));
    promote(q, now); // what is due by now goes before this message
    const id = ++lastId;
    q.entries.push({ id, flags, body: Uint8Array.from(body), created: now, expiresAt, opened: false, due: due > now ? due : 0 });
    q.total++;
    return id;
  }

  /** The queue `name`, created if need be, with what is due by now moved to its tail. */
  function into(name: string, now: number): Queue {
    let q = queues.get(name);
    if (q === undefined) queues.set(name, (q = newQueue()));
    promote(q, now);
    return q;
  }

  function release(name: string, id: number, due: number): boolean {
    const q = queues.get(name);
    if (q?.entries.find((e) => e.id === id && e.opened) === undefined) return false;
    change();
    const e = q.entries.find((e) => e.id === id && e.opened)!;
    e.opened = false;
    e.due = due;
    return true;
  }

  const bytes = (q: Queue) => q.entries.reduce((n, e) => n + e.body.length, 0);
  const openCount = (q: Queue) => q.entries.filter((e) => e.opened).length;
  const view = (e: Entry): Message => ({ id: e.id, flags: e.flags, expires: e.expiresAt, body: e.body });
  const summary = (name: string, q: Queue): QueueSummary => ({
    name,
    total: q.total,
    fetched: q.fetched,
    items: q.entries.length,
    bytes: bytes(q),
    open: openCount(q),
    delayed: q.entries.filter((e) => e.due > 0).length,
    features: { ...q.features },
  });

  function countFeature(name: string, counter: FeatureCounter): void {
    if (!queues.has(name)) return;
    change(); // first, so that a rollback undoes the count as it undoes a set
    queues.get(name)!.features[counter]++;
  }

  return {
    enqueue: (name, flags, body, expiresAt, now) => enqueue(name, flags, body, expiresAt, now, 0),
    dequeue(name, now) {
      const q = queues.get(name);
      const i = q === undefined ? -1 : firstLive(q, now);
      if (i < 0) return null;
      change();
      const [e] = q!.entries.splice(i, 1);
      q!.fetched++;
      return view(e!);
    },
    peek(name, now) {
      const q = queues.get(name);
      const i = q === undefined ? -1 : firstLive(q, now);
      return i < 0 ? null : view(q!.entries[i]!);
    },
    open(name, now) {
      const q = queues.get(name);
      const i = q === undefined ? -1 : firstLive(q, now);
      if (i < 0) return null;
      change();
      q!.entries[i]!.opened = true;
      q!.entries[i]!.deliveries = (q!.entries[i]!.deliveries ?? 0) + 1;
      return view(q!.entries[i]!);
    },
    confirm(name, id) {
      const q = queues.get(name);
      const i = q === undefined ? -1 : q.entries.findIndex((e) => e.id === id && e.opened);
      if (i < 0) return false;
      change();
      q!.entries.splice(i, 1);
      q!.fetched++;
      return true;
    },
    release: (name, id) => release(name, id, 0),
    restore(name, m, now) {
      change();
      let q = queues.get(name);
      if (q === undefined) queues.set(name, (q = { ...newQueue(), total: 1, fetched: 1 }));
      q.fetched--;
      let at = q.entries.findIndex((e) => e.id > m.id);
      if (at < 0) at = q.entries.length;
      q.entries.splice(at, 0, { id: m.id, flags: m.flags, body: m.body, created: now, expiresAt: m.expires, opened: false, due: 0 });
    },
    drop(name) {
      if (!queues.has(name)) return false;
      change();
      queues.delete(name);
      return true;
    },
    flush(name) {
      const q = queues.get(name);
      if (q === undefined) return;
      change();
      q.entries = [];
    },
    flushAll() {
      change();
      for (const q of queues.values()) q.entries = [];
    },
    has: (name) => queues.has(name),
    size(name) {
      const q = queues.get(name);
      return q === undefined ? null : { items: q.entries.length, bytes: bytes(q) };
    },
    list(): QueueCounters[] {
      return [...queues.keys()].sort().map((name) => {
        const q = queues.get(name)!;
        return { name, total: q.total, fetched: q.fetched };
      });
    },
    *summaries() {
      // Each step takes the first name after the last one given, as the SQLite store's cursor
      // does; quadratic, which is fine at test sizes.
      let last: string | null = null;
      for (;;) {
        let next: string | null = null;
        for (const name of queues.keys()) if ((last === null || name > last) && (next === null || name < next)) next = name;
        if (next === null) return;
        yield summary(next, queues.get(next)!);
        last = next;
      }
    },
    detail(name, now): QueueDetail | null {
      const q = queues.get(name);
      if (q === undefined) return null;
      const first = q.entries.find((e) => e.due === 0);
      const delayed = q.entries.filter((e) => e.due > 0).length;
      const oldestAgeMs = first === undefined ? 0 : Math.max(0, now - first.created);
      return { ...summary(name, q), oldestAgeMs, delayed, deduplicated: q.features.deduplicated };
    },
    countFeature,
    totals() {
      let items = 0;
      let open = 0;
      for (const q of queues.values()) {
        items += q.entries.length;
        open += openCount(q);
      }
      return { queues: queues.size, items, open, expired };
    },
    sweepExpired(now, limit) {
      let n = 0;
      for (const q of queues.values()) {
        for (let i = 0; i < q.entries.length && n < limit; i++) {
          const e = q.entries[i]!;
          if (e.opened || e.due > 0 || e.expiresAt === 0 || e.expiresAt > now) continue;
          change();
          q.entries.splice(i--, 1);
          n++;
        }
      }
      expired += n;
      return n;
    },
    commit() {
      snapshot = null;
    },
    rollback() {
      if (snapshot === null) return;
      ({ queues, lastId, expired, tokens } = snapshot);
      snapshot = null;
    },
    dirty: () => snapshot !== null,
    writable: () => true,
    maintain() {},
    close() {},
    deadLetters: {
      deliveries: (name, id) => queues.get(name)?.entries.find((e) => e.id === id && e.opened)?.deliveries ?? -1,
      moveOpen(name, id, target, now) {
        const q = queues.get(name);
        const i = q === undefined ? -1 : q.entries.findIndex((e) => e.id === id && e.opened);
        if (i < 0) return false;
        change();
        const e = q!.entries.find((e) => e.id === id && e.opened)!;
        q!.entries = q!.entries.filter((x) => x !== e);
        q!.fetched++;
        const t = into(target, now);
        t.entries.push({ ...e, id: ++lastId, opened: false, deliveries: 0 });
        t.total++;
        return true;
      },
      redrive(from, to, now) {
        const f = queues.get(from);
        if (f === undefined || from === to) return 0;
        change();
        const moving = f.entries.filter((e) => !e.opened && e.due === 0);
        f.entries = f.entries.filter((e) => e.opened || e.due > 0);
        f.fetched += moving.length;
        const t = into(to, now);
        for (const e of moving) t.entries.push({ ...e, id: ++lastId, deliveries: 0 });
        t.total += moving.length;
        return moving.length;
      },
    },
    dedup: {
      seen(name, token, now) {
        const until = tokens.get(`${name}\n${token}`);
        if (until === undefined || until <= now) return false;
        countFeature(name, "deduplicated");
        return true;
      },
      remember(name, token, until) {
        change();
        tokens.set(`${name}\n${token}`, until);
      },
      sweep(now, limit) {
        let n = 0;
        for (const [key, until] of tokens) {
          if (n >= limit) break;
          if (until > now) continue;
          change();
          tokens.delete(key);
          n++;
        }
        return n;
      },
    },
    delays: {
      enqueue,
      release: (name, id, due, now) => release(name, id, due > now ? due : 0),
      promoteDue(now, limit) {
        const gained: string[] = [];
        for (const [name, q] of queues) {
          if (limit <= 0) break;
          const n = promote(q, now, limit);
          if (n > 0) gained.push(name);
          limit -= n;
        }
        return gained;
      },
    },
  };
}
