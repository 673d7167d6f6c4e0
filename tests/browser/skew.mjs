// Opens a page in headless Chromium, waits for a line on stdin (the test
// deploys the next release meanwhile), then opens the page's lazily loaded
// panel and follows its link to a page not visited yet. Prints one JSON line
// when the page is open and one with what happened after the deploy.
//
// usage: node skew.mjs <chromium> <url> <fresh user-data-dir>
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const [executablePath, url, userDataDir] = process.argv.slice(2);
const WAIT_MS = 15000;

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
const seen = { console: [], pageErrors: [], failed: [], loaded: [] };
page.on('console', (m) => seen.console.push({ type: m.type(), text: m.text() }));
page.on('pageerror', (e) => seen.pageErrors.push(String(e)));
page.on('requestfailed', (r) => seen.failed.push({ url: r.url(), error: r.failure()?.errorText }));
page.on('response', (r) => {
  const path = new URL(r.url()).pathname;
  if (r.status() >= 400) seen.failed.push({ url: r.url(), status: r.status() });
  else if (path.startsWith('/_next/static/')) seen.loaded.push(path);
});

await page.goto(url, { waitUntil: 'networkidle' });
// Let the router prefetch the link's route while this release serves.
await page.waitForTimeout(1000);
const opened = await page.textContent('h1');
console.log(JSON.stringify({ opened }));

const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once('line', resolve));
const before = seen.loaded.length;

const text = async (selector) =>
  page
    .waitForSelector(selector, { timeout: WAIT_MS })
    .then((element) => element.textContent())
    .catch(() => null);

await page.click('#open');
const panel = await text('#panel');
let other = null;
if (await page.$('#other')) {
  await page.click('#other');
  other = await text('#other-page');
}
const result = {
  panel,
  other,
  url: page.url(),
  loadedAfterDeploy: seen.loaded.slice(before),
  ...seen,
};
delete result.loaded;
console.log(JSON.stringify(result));
await context.close();
