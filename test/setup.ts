import { setDefaultTimeout } from "bun:test";

// Tests wait for replies, never for guessed times; this bound only catches a hang. The
// crash torture sets its own, longer one. Bun 1.4.5 applies a preload's setDefaultTimeout to the
// first test file only (the others get 5 s, which a loaded machine overruns): npm test and .ci/run
// pass --timeout 30000 too.
setDefaultTimeout(30_000);
