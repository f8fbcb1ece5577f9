/** Every fixed reply the server sends, named once (beanstalkd's MSG_* constants). */
export const REPLY = {
  STORED: "STORED\r\n",
  END: "END\r\n",
  DELETED: "DELETED\r\n",
  NOT_FOUND: "NOT_FOUND\r\n",
  OK: "OK\r\n",
  RESET: "RESET\r\n",
  ERROR: "ERROR\r\n",
  BAD_FORMAT: "CLIENT_ERROR bad command line format\r\n",
  BAD_CHUNK: "CLIENT_ERROR bad data chunk\r\n",
  LINE_TOO_LONG: "CLIENT_ERROR line too long\r\n",
  TOO_LARGE: "SERVER_ERROR object too large for cache\r\n",
  ALREADY_OPEN: "CLIENT_ERROR this connection already has an open message on that queue\r\n",
  TOO_MANY_OPEN: "CLIENT_ERROR too many open messages on this connection\r\n",
  TOO_MANY_QUEUES: "SERVER_ERROR too many queues\r\n",
  NOTHING_OPEN: "CLIENT_ERROR nothing is open on that queue on this connection\r\n",
  LEASE_EXPIRED: "CLIENT_ERROR the open message's lease expired; it is back in its queue\r\n",
  UNAUTHENTICATED: "CLIENT_ERROR unauthenticated\r\n",
  AUTH_FAILED: "CLIENT_ERROR authentication failure\r\n",
  AUTH_BAD_TOKEN: "CLIENT_ERROR bad authentication token format\r\n",
  PERMISSION_DENIED: "CLIENT_ERROR permission denied\r\n",
  NO_DELAYS: "SERVER_ERROR this store does not support delays (delay=)\r\n",
  NO_REDRIVE: "SERVER_ERROR this store does not support redrive\r\n",
  QUEUE_FULL: "SERVER_ERROR queue full\r\n",
  NO_DEDUP: "SERVER_ERROR this store does not support idempotent sets (id=)\r\n",
} as const;

export function serverError(reason: string): string {
  // A reason must stay on one line, or the client would read the rest as another reply.
  return `SERVER_ERROR ${reason.replace(/[\r\n]+/g, " ")}\r\n`;
}

/** The header line of one message in a get reply; the body and "\r\n" follow it. */
export function valueHeader(key: string, flags: number, bytes: number, id?: number): string {
  if (id !== undefined) return `VALUE ${key} ${flags} ${bytes} ${id}\r\n`;
  // The consumers of a queue mostly see the same key, flags and size: the last header is reused,
  // which saves building, and flattening when it is copied out, a string per VALUE (about 10% of
  // the CPU of a pipelined set+get, docs/performance.md).
  if (key !== lastKey || flags !== lastFlags || bytes !== lastBytes) {
    lastKey = key;
    lastFlags = flags;
    lastBytes = bytes;
    lastHeader = `VALUE ${key} ${flags} ${bytes}\r\n`;
  }
  return lastHeader;
}

let lastKey = "";
let lastFlags = -1;
let lastBytes = -1;
let lastHeader = "";

export function statLine(name: string, value: string | number): string {
  return `STAT ${name} ${value}\r\n`;
}
