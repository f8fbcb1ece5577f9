/**
 * A levelled logger on stderr, one line per event: "<ISO time> <LEVEL> <message>", or with
 * --log-format json one object per line: {"time":…,"level":…,"msg":…}.
 * -v shows warnings and notices about the client side, -vv every command (MemcacheQ's levels).
 */
export type Level = "error" | "warn" | "info" | "debug" | "trace";

export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  /** Shown with -v. */
  debug(message: string): void;
  /** Shown with -vv: every command. */
  trace(message: string): void;
  readonly verbosity: number;
}

export function createLogger(
  verbosity: number,
  write: (line: string) => void = (l) => process.stderr.write(l),
  format: "text" | "json" = "text",
): Logger {
  const emit = (level: string, message: string) => {
    const time = new Date().toISOString();
    write(format === "json"
      ? JSON.stringify({ time, level: level.toLowerCase(), msg: message }) + "\n"
      : `${time} ${level} ${message}\n`);
  };
  return {
    error: (m) => emit("ERROR", m),
    warn: (m) => emit("WARN", m),
    info: (m) => emit("INFO", m),
    debug: (m) => verbosity >= 1 && emit("DEBUG", m),
    trace: (m) => verbosity >= 2 && emit("TRACE", m),
    verbosity,
  };
}
