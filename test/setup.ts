import { setDefaultTimeout } from "bun:test";

// Tests wait for replies, never for guessed times; this bound only catches a hang. The
// crash torture sets its own, longer one.
setDefaultTimeout(30_000);
