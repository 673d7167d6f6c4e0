// Opens two tabs in headless Chromium — an App Router page and a Pages
// Router page — and waits for a line on stdin (the test deploys the next
// release meanwhile). Then the first tab opens its lazily loaded panel and
// follows its (prefetched) link, the second follows a link to a page whose
// chunk it never loaded. Prints one JSON line once the tabs are open and one
// with what happened after the deploy.
//
// usage: node skew.mjs <chromium> <base url> <fresh user-data-dir>
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const [executablePath, base, userDataDir] = process.argv.slice(2);
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
const seen = { console: [], pageErrors: [], failed: [], loaded: [] };
const watch = (page) => {
  page.on('console', (m) =>
    seen.console.push({ type: m.type(), text: m.text(), url: m.location()?.url ?? '' }),
  );
  page.on('pageerror', (e) => seen.pageErrors.push(String(e)));
  page.on('requestfailed', (r) => seen.failed.push({ url: r.url(), error: r.failure()?.errorText }));
  page.on('response', (r) => {
    const path = new URL(r.url()).pathname;
    if (r.status() >= 400) seen.failed.push({ url: r.url(), status: r.status() });
    else if (path.startsWith('/_next/static/')) seen.loaded.push(path);
  });
  return page;
};
const app = watch(context.pages()[0] ?? (await context.newPage()));
const legacy = watch(await context.newPage());

await app.goto(`${base}/`, { waitUntil: 'networkidle' });
await legacy.goto(`${base}/legacy`, { waitUntil: 'networkidle' });
// Let the App Router prefetch its link's route (and its chunk) while this release serves.
const prefetched = () => seen.loaded.some((path) => path.includes('/chunks/app/other/page-'));
for (let waited = 0; !prefetched() && waited < WAIT_MS; waited += 100) {
  await app.waitForTimeout(100);
}
// Gone if a navigation reloads the document instead of rendering in place.
await legacy.evaluate(() => {
  window.__sameDocument = true;
});
console.log(
  JSON.stringify({
    opened: await app.textContent('h1'),
    legacy: await legacy.textContent('h1'),
    prefetched: prefetched(),
  }),
);

const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once('line', resolve));
const before = seen.loaded.length;

const text = async (page, selector) =>
  page
    .waitForSelector(selector, { timeout: WAIT_MS })
    .then((element) => element.textContent())
    .catch(() => null);

await app.click('#open');
const panel = await text(app, '#panel');
let other = null;
if (await app.$('#other')) {
  await app.click('#other');
  other = await text(app, '#other-page');
}
await legacy.click('#legacy-link');
const legacyOther = await text(legacy, '#legacy-other');
const sameDocument = await legacy.evaluate(() => window.__sameDocument === true).catch(() => null);

const result = {
  panel,
  other,
  legacyOther,
  sameDocument,
  loadedAfterDeploy: seen.loaded.slice(before),
  ...seen,
};
delete result.loaded;
console.log(JSON.stringify(result));
// Closing may wait on a browser that is already gone: give it 5 s.
await Promise.race([context.close(), new Promise((resolve) => setTimeout(resolve, 5000))]);
process.exit(0);
