import { afterAll, setDefaultTimeout } from "bun:test";
import { cleanUpOnExit, removeTempDirs } from "./e2e/harness";

// Tests wait for replies, never for guessed times; this bound only catches a hang. The
// crash torture sets its own, longer one. Bun 1.4.5 applies a preload's setDefaultTimeout to
// the first test file only (the others keep 5 s), so `npm test` and .ci/run also pass
// --timeout 30000; this line covers a single file run without it.
setDefaultTimeout(30_000);

// A preload's afterAll runs once, after every file: the temporary data directories of the
// whole run go then (servers a test left running were killed by its own afterAll).
afterAll(removeTempDirs);
// An interrupted run (SIGINT, SIGTERM) runs no afterAll: the servers and directories go then.
cleanUpOnExit();
