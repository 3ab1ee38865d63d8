// The dashboard's cost, for `cargo xtask bench dashboard`: first paint of `/` over several cold loads, the
// page's weight, then PAGES signed-in dashboards kept open until stdin closes. Prints one JSON line per
// phase; "open" means every page is loaded and live (the xtask side then measures the daemon).
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const url = process.env.AURA_URL;
const token = process.env.AURA_TOKEN;
const pages = Number(process.env.PAGES ?? '5');
const loads = Number(process.env.LOADS ?? '10');
if (!url || !token) {
  console.error('AURA_URL and AURA_TOKEN are required');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const signIn = await context.request.post(`${url}/api/session`, {
    data: { token }, headers: { Origin: url },
  });
  if (!signIn.ok()) throw new Error(`sign-in: ${signIn.status()} ${await signIn.text()}`);

  // Cold loads: a fresh page each time, the HTTP cache off, so every asset is fetched again.
  const paints = [];
  let weight = null;
  for (let i = 0; i < loads; i++) {
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
    await page.goto(`${url}/`, { waitUntil: 'load' });
    const timing = await page.evaluate(() => {
      const fcp = performance.getEntriesByName('first-contentful-paint')[0];
      const nav = performance.getEntriesByType('navigation')[0];
      const resources = performance.getEntriesByType('resource')
        .filter((r) => new URL(r.name).pathname.startsWith('/assets/'));
      return {
        fcp: fcp ? fcp.startTime : null,
        html: nav.decodedBodySize,
        htmlSent: nav.encodedBodySize,
        assets: resources.map((r) => ({
          path: new URL(r.name).pathname, bytes: r.decodedBodySize, sent: r.encodedBodySize,
        })),
      };
    });
    if (timing.fcp === null) {
      // Paint entries are recorded once something is drawn; give the page a moment.
      await page.waitForTimeout(500);
      timing.fcp = await page.evaluate(
        () => performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null);
    }
    paints.push(timing.fcp);
    weight ??= { html: timing.html, htmlSent: timing.htmlSent, assets: timing.assets };
    await page.close();
  }
  console.log(JSON.stringify({ phase: 'paint', paints, weight }));

  const open = [];
  for (let i = 0; i < pages; i++) {
    const page = await context.newPage();
    page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
    await page.goto(`${url}/`, { waitUntil: 'load' });
    open.push(page);
  }
  // Let each page open its stream and draw its first samples.
  await new Promise((r) => setTimeout(r, 5000));
  console.log(JSON.stringify({ phase: 'open', pages: open.length }));
  await new Promise((resolve) => createInterface({ input: process.stdin }).on('close', resolve));
  for (const page of open) await page.close();
} finally {
  await browser.close();
}
