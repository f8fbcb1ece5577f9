/**
 * TLS, as memcached spells it (-Z, -o ssl_chain_cert=,ssl_key=,ssl_ca_cert=,ssl_verify_mode=)
 * and with mcq's long forms (--tls-cert, --tls-key, --tls-ca, --tls-verify). Bun.listen's own
 * `tls` option does the work; this file turns the settings into its options, reading and
 * checking the files first, so that a bad file is named at start and a bad new one at a reload
 * keeps the old certificate (listeners.ts).
 */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";
import type { TlsSettings } from "./config";
import { reason } from "./errors";

/** memcached's ssl_verify_mode: 0 none, 1 request, 2 require, 3 require once (the same here). */
const VERIFY_MODES = ["none", "request", "require", "require"] as const;

/** The -o keys mcq knows (memcached has many more; the rest are refused, not ignored). */
const EXTENDED_KEYS = ["ssl_chain_cert", "ssl_key", "ssl_ca_cert", "ssl_verify_mode"];

/**
 * OpenSSL's SSL_OP_NO_SSLv2 | NO_SSLv3 | NO_TLSv1 | NO_TLSv1_1: TLS 1.2 at least.
 * Bun's TLSOptions has no minVersion.
 */
const TLS_1_2_AT_LEAST = 0x01000000 | 0x02000000 | 0x04000000 | 0x10000000;

export class TlsError extends Error {}

/** One -o value, `key=value[,key=value]`, added to the earlier ones. Throws on an unknown key. */
export function extendedOptions(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const out = { ...(previous ?? {}) };
  for (const item of value.split(",")) {
    const eq = item.indexOf("=");
    const key = eq < 0 ? item : item.slice(0, eq);
    if (!EXTENDED_KEYS.includes(key)) throw new TlsError(`unknown -o option '${key}' (mcq knows ${EXTENDED_KEYS.join(", ")})`);
    if (eq < 0 || eq === item.length - 1) throw new TlsError(`-o ${key} needs a value (${key}=...)`);
    out[key] = item.slice(eq + 1);
  }
  return out;
}

export interface TlsFlags {
  enable: boolean;
  cert?: string;
  key?: string;
  ca?: string;
  verify?: string;
  extended?: Record<string, string>;
}

/** The TLS settings of the command line (long forms win over -o), or why they do not hold. */
export function tlsSettings(f: TlsFlags): TlsSettings | null {
  const x = f.extended ?? {};
  const cert = f.cert ?? x.ssl_chain_cert;
  const key = f.key ?? x.ssl_key;
  const ca = f.ca ?? x.ssl_ca_cert ?? null;
  let verify = f.verify as TlsSettings["verify"] | undefined;
  if (verify === undefined && x.ssl_verify_mode !== undefined) {
    verify = VERIFY_MODES[Number(x.ssl_verify_mode)];
    if (!/^[0-3]$/.test(x.ssl_verify_mode)) throw new TlsError(`-o ssl_verify_mode=${x.ssl_verify_mode}: not 0, 1, 2 or 3`);
  }
  const given = [cert, key, f.ca ?? x.ssl_ca_cert, verify].some((v) => v !== undefined);
  if (!f.enable) {
    if (given) throw new TlsError("TLS settings given without -Z (--enable-ssl), which turns TLS on");
    return null;
  }
  if (cert === undefined || key === undefined) throw new TlsError("-Z needs --tls-cert and --tls-key (or -o ssl_chain_cert=<pem>,ssl_key=<pem>)");
  verify ??= "none";
  if (verify !== "none" && ca === null) throw new TlsError(`--tls-verify ${verify} needs --tls-ca (the CA that signs client certificates)`);
  return { cert, key, ca, verify };
}

/** Bun's TLS options, as loadTls made them from the files. */
export type LoadedTls = Bun.TLSOptions & { cert: string };

/** Bun's TLS options for these settings, the files read and checked now. Throws TlsError naming the file. */
export function loadTls(settings: TlsSettings): LoadedTls {
  const cert = readPem(settings.cert, "certificate");
  const key = readPem(settings.key, "key");
  const ca = settings.ca === null ? undefined : readPem(settings.ca, "CA certificate");
  try {
    createSecureContext({ cert, key, ca });
  } catch (e) {
    throw new TlsError(`the TLS certificate ${settings.cert} and key ${settings.key} cannot be used: ${(e as Error).message}`);
  }
  return {
    cert,
    key,
    ca,
    requestCert: settings.verify !== "none",
    rejectUnauthorized: settings.verify === "require",
    secureOptions: TLS_1_2_AT_LEAST,
  };
}

/** "serial 0B, valid until <date>": what the log says of a certificate loaded. */
export function describeCertificate(pem: string): string {
  try {
    const x = new X509Certificate(pem);
    return `serial ${x.serialNumber}, valid until ${x.validTo}`;
  } catch {
    return "serial unknown";
  }
}

function readPem(path: string, what: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new TlsError(`cannot read the TLS ${what} ${path}: ${reason(e)}`);
  }
  if (!text.includes("-----BEGIN ")) throw new TlsError(`the TLS ${what} ${path} is not PEM (no -----BEGIN line)`);
  return text;
}
