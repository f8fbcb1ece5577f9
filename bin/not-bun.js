// What `import "mcq"` finds outside Bun: the server needs Bun's runtime (bun:sqlite, Bun.listen).
throw new Error("mcq's startServer runs on Bun: run your tests with `bun test` (https://bun.sh)");
