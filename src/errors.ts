/**
 * A system error's reason in words, for one-line messages that name the path themselves:
 * Node's messages ("EACCES: permission denied, mkdir '…'") repeat the path and the call.
 */
const REASONS: Record<string, string> = {
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  ENOENT: "no such file or directory",
  ENOTDIR: "a part of the path is not a directory",
  EISDIR: "it is a directory",
  EEXIST: "it already exists",
  EROFS: "read-only file system",
  ENOSPC: "no space left on the device",
  EADDRINUSE: "address already in use",
  ECONNREFUSED: "connection refused",
};

export function reason(e: unknown): string {
  const code = (e as { code?: unknown }).code;
  if (typeof code === "string" && REASONS[code] !== undefined) return REASONS[code];
  return (e as Error).message ?? String(e);
}
