// Bundles src/console.ts into dist/console.js (one minified IIFE, the SDK included) and prints
// its size; fails when it is over 60 KiB gzipped. `--check` builds in memory and fails when
// the committed dist/console.js differs (the server embeds that file, so it must be current).
import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { gzipSync } from "node:zlib";

// Not embedded in other sites, so only a sanity bound.
const LIMIT = 200 * 1024;
const OUT = "dist/console.js";
const check = process.argv.includes("--check");

const result = await build({
  entryPoints: ["src/console.ts"],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  platform: "browser",
  legalComments: "none",
  charset: "utf8",
  write: false,
  logLevel: "warning",
});
const code = result.outputFiles[0].contents;
const gz = gzipSync(code, { level: 9 }).length;
console.log(`console.js: ${(code.length / 1024).toFixed(1)} KiB, ${(gz / 1024).toFixed(1)} KiB gzipped (limit ${LIMIT / 1024} KiB)`);
if (gz > LIMIT) {
  console.error("console.js is over its size limit");
  process.exit(1);
}
if (check) {
  let committed;
  try {
    committed = readFileSync(OUT);
  } catch {
    committed = Buffer.alloc(0);
  }
  if (!Buffer.from(code).equals(committed)) {
    console.error(`${OUT} is not what the sources build: run \`npm run build\` in clients/console and commit it`);
    process.exit(1);
  }
  console.log(`${OUT} matches the sources`);
} else {
  mkdirSync("dist", { recursive: true });
  writeFileSync(OUT, code);
}
