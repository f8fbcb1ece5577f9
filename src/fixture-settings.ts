/**
 * Checks the settings given to the fixture's startServer() (fixture.ts). They are the config
 * table's names (config.ts); each value must have the type of its default there, since no
 * command-line parser stands between the caller and the server. A mistake throws a TypeError
 * naming the setting, before anything starts.
 */
import { DEFAULTS } from "./config";

/** Settings that take one of a few words. */
const CHOICES: Record<string, readonly string[]> = {
  sync: ["full", "normal", "off"],
  logFormat: ["text", "json"],
};

/** Config entries that are not the fixture's to take, and where they come from instead. */
const NOT_SETTINGS: Record<string, string> = {
  home: "the data directory comes from store: { dir }",
  pidFile: "a pid file belongs to the mcq binary, not to a server inside another process",
  store: "give the store as store: \"memory\", { dir } or { postgres: url }",
};

/** Numbers that must be at least 1, as the command line requires (0 would stop the server working). */
const POSITIVE = new Set(["maxConns", "maxOpen", "maxQueues", "cacheMb", "maxConnMemory", "maxLine", "maxUnsent", "maintainMs"]);

const fail = (message: string): never => {
  throw new TypeError(`mcq startServer: ${message}`);
};

function isPort(value: unknown): boolean {
  return Number.isInteger(value) && (value as number) >= 0 && (value as number) <= 65535;
}

/** Throws a TypeError for the first setting that is unknown or whose value is of the wrong kind. */
export function checkSettings(settings: Record<string, unknown>): void {
  const table = DEFAULTS as unknown as Record<string, unknown>;
  for (const [name, value] of Object.entries(settings)) {
    if (value === undefined) continue; // the default, as if not given
    const shown = JSON.stringify(value) ?? String(value);
    if (name in NOT_SETTINGS) fail(`${name} is not a setting here: ${NOT_SETTINGS[name]}`);
    if (!(name in table)) {
      const names = Object.keys(table).filter((n) => !(n in NOT_SETTINGS)).join(", ");
      fail(`unknown setting ${JSON.stringify(name)}; the settings are the config table's names: ${names}`);
    }
    const choices = CHOICES[name];
    if (choices !== undefined) {
      if (!choices.includes(value as string)) fail(`${name} must be one of ${choices.join(", ")}, not ${shown}`);
    } else if (name === "http") {
      const address = value as { hostname?: unknown; port?: unknown } | null;
      const ok = address === null || (typeof address === "object" && typeof address.hostname === "string" && isPort(address.port));
      if (!ok) fail(`http must be { hostname: string, port: 0-65535 } or null, not ${shown}`);
    } else if (name === "unixSocket") {
      if (value !== null && (typeof value !== "string" || value === "")) fail(`unixSocket must be a path or null, not ${shown}`);
    } else if (name === "port") {
      if (!isPort(value)) fail(`port must be a whole number from 0 to 65535, not ${shown}`);
    } else if (typeof table[name] === "number") {
      const min = POSITIVE.has(name) ? 1 : 0;
      if (!Number.isSafeInteger(value) || (value as number) < min) fail(`${name} must be a whole number ≥ ${min}, not ${shown}`);
    } else if (typeof value !== typeof table[name]) {
      fail(`${name} must be a ${typeof table[name]}, not ${shown}`);
    }
  }
}
