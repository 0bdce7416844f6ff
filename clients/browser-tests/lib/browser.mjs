// Debian's chromium (/usr/bin/chromium) driven by playwright-core: never a downloaded browser.
// Playwright gives each launch a fresh temporary profile (user data dir) of its own.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
export const ARTIFACTS = resolve(import.meta.dirname, "../../../target/browser-artifacts");

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Without the background-networking flags chromium keeps calling hosts this machine
    // cannot reach.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Where screenshots go (git-ignored, under target/). */
export function artifact(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}

const require = createRequire(import.meta.url);

/** axe-core's serious and critical findings inside `selector` (shadow roots included). */
export async function axeViolations(page, selector) {
  await page.addScriptTag({ path: require.resolve("axe-core/axe.min.js") });
  const violations = await page.evaluate(async (sel) => {
    const r = await globalThis.axe.run({ include: [[sel]] }, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target) }));
  }, selector);
  return violations.filter((v) => v.impact === "serious" || v.impact === "critical");
}
