/**
 * A levelled logger, one line per event: "<ISO time> <LEVEL> <message>", or with
 * --log-format json one object per line: {"time":…,"level":…,"msg":…}.
 * -v shows warnings and notices about the client side, -vv every command (MemcacheQ's levels).
 * Lines go to stderr, or with --log-file to a file that SIGHUP reopens (after logrotate moved it).
 */
import { closeSync, openSync, writeSync } from "node:fs";

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

/** One log line as the format writes it, its end included. */
export function formatLine(format: "text" | "json", level: string, message: string): string {
  const time = new Date().toISOString();
  return format === "json"
    ? JSON.stringify({ time, level: level.toLowerCase(), msg: message }) + "\n"
    : `${time} ${level} ${message}\n`;
}

export function createLogger(
  verbosity: number,
  write: (line: string) => void = (l) => process.stderr.write(l),
  format: "text" | "json" = "text",
): Logger {
  const emit = (level: string, message: string) => write(formatLine(format, level, message));
  return {
    error: (m) => emit("ERROR", m),
    warn: (m) => emit("WARN", m),
    info: (m) => emit("INFO", m),
    debug: (m) => verbosity >= 1 && emit("DEBUG", m),
    trace: (m) => verbosity >= 2 && emit("TRACE", m),
    verbosity,
  };
}

/** A log file opened for appending; reopen() starts on whatever file has the name now. */
export interface LogFile {
  readonly path: string;
  write(line: string): void;
  /** Opens the path again and only then closes the old file, so a failure keeps logging to it. */
  reopen(): void;
}

export function openLogFile(path: string): LogFile {
  // The log says which queues exist and who connected: the owner's, and a group's to read.
  const open = () => openSync(path, "a", 0o640);
  let fd = open();
  return {
    path,
    // Synchronous: a line is in the file before whatever it reports (a stop, an exit) goes on.
    write: (line) => void writeSync(fd, line),
    reopen() {
      const next = open();
      closeSync(fd);
      fd = next;
    },
  };
}
