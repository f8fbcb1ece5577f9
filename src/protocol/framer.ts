/**
 * The stateful half of the parser: one per connection. It keeps the bytes not yet
 * parsed and the count of bytes still to be swallowed, and hands out requests one at
 * a time, so the connection can stop taking requests (a blocking get) and resume later.
 *
 * Invariant: a request returned by next() holds views into the framer's buffer, which
 * stay valid until the next push(). Chunks are parsed in place when nothing is left
 * over; only a request split across chunks is copied, into a buffer that grows by
 * doubling, so a 1 MB body arriving in 64 KB pieces is copied about twice, not sixteen
 * times. The buffer grows with the bytes that arrived, never to the size a header merely
 * declares: `set q 0 0 1048576` followed by nothing costs 4 KB, not 1 MB, per connection.
 */
import { parseRequest, type Limits } from "./parse";
import type { Request } from "./types";

const EMPTY = Buffer.alloc(0);
/** The smallest buffer the framer allocates: a few ordinary requests. */
const MIN_BUFFER = 4096;

export interface Framer {
  /** Adds bytes read from the socket. */
  push(chunk: Buffer): void;
  /** The next complete request, or null until more bytes arrive. */
  next(): Request | null;
  /** Bytes received and not yet parsed. */
  pending(): number;
  /** Bytes of the buffer the framer allocated itself (0 while it parses a chunk in place). */
  capacity(): number;
}

export function createFramer(limits: Limits): Framer {
  let buf: Buffer = EMPTY;
  let owned = false; // whether buf is ours (else it is the caller's chunk, parsed in place)
  let pos = 0;
  let len = 0;
  let skip = 0; // bytes of a refused data block still to discard
  let need = 0; // total bytes the request at pos is known to need

  function push(chunk: Buffer): void {
    if (skip > 0) {
      const n = Math.min(skip, chunk.length);
      skip -= n;
      chunk = chunk.subarray(n);
    }
    if (chunk.length === 0) return;
    if (pos === len) {
      // Nothing left over: parse the chunk in place.
      buf = chunk;
      owned = false;
      pos = 0;
      len = chunk.length;
      return;
    }
    const left = len - pos;
    const total = left + chunk.length;
    if (!owned || buf.length - pos < total) {
      // Move what is left to the front of a buffer twice what is held now, or just the size of
      // the request when that is less: never more than what arrived could justify.
      const grown = Math.max(2 * total, MIN_BUFFER);
      const size = need >= total ? Math.min(need, grown) : grown;
      const target = owned && buf.length >= total ? buf : Buffer.allocUnsafe(size);
      target.set(buf.subarray(pos, len), 0);
      buf = target;
      owned = true;
      pos = 0;
      len = left;
    }
    buf.set(chunk, len);
    len += chunk.length;
  }

  function next(): Request | null {
    if (pos === len) return null;
    const parsed = parseRequest(buf, pos, len, limits);
    if (parsed.type === "more") {
      need = parsed.need > 0 ? parsed.need - pos : 0;
      return null;
    }
    need = 0;
    pos = parsed.next;
    skip = parsed.skip;
    if (skip > 0) {
      const n = Math.min(skip, len - pos);
      pos += n;
      skip -= n;
    }
    return parsed.req;
  }

  return { push, next, pending: () => len - pos, capacity: () => (owned ? buf.length : 0) };
}
