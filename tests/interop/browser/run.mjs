// Drive Debian's Chromium through one case of index.html and print the result.
// Usage: node run.mjs PAGE_URL TURN_URL USERNAME CREDENTIAL [normal|wrong|tls|no-relay|api|api-refused]
// (api, api-refused: TURN_URL is tern's credential endpoint, CREDENTIAL its key)
// With CHROMIUM_SPKI set, Chromium accepts a certificate with that public key
// (base64 SHA-256 of its SubjectPublicKeyInfo) whoever signed it.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [pageUrl, turnUrl, username, credential, mode = "normal"] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "tern-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    // tern and its relays are on loopback in this test.
    "--allow-loopback-in-peer-connection",
    ...(process.env.CHROMIUM_SPKI ? [`--ignore-certificate-errors-spki-list=${process.env.CHROMIUM_SPKI}`] : []),
  ],
});
let result;
try {
  const page = await context.newPage();
  await page.goto(pageUrl);
  result = await page.evaluate((c) => window.runCase(c), { turnUrl, username, credential, mode });
} catch (e) {
  result = { ok: false, error: String(e) };
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
