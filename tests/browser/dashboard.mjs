// The dashboard end to end in Chromium: the page loads with no console error or CSP violation; sign-in
// with the admin token; an FFmpeg job submitted through the API appears and its progress bar moves; the
// Cancel button cancels it (the API says so); the label filter asks the daemon (`label=k=v`), keeps out a
// live job without the label and says why it refuses a malformed one; a host chart has data; a read-only token sees no job or node
// controls; screenshots at 1280×800 and 390×844 go to AURA_ARTIFACTS.

import { launch, api, watch, signIn, until, need, TOKEN } from './common.mjs';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const READ_TOKEN = need('AURA_READ_TOKEN');
// Longer than the page's coalescing of live changes (REFRESH_DELAY) and their reads.
const REFRESH_SETTLE = 1000;
const ARTIFACTS = need('AURA_ARTIFACTS');
mkdirSync(ARTIFACTS, { recursive: true });

const browser = await launch();
const errors = [];
const report = {};
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  watch(page, errors);

  await signIn(page, TOKEN);
  const who = await page.textContent('#who-name');
  if (!who.includes('(admin)')) throw new Error(`signed in as ${who}`);
  // Admin sees the submit form and a node control.
  if (!(await page.isVisible('#submit-box'))) throw new Error('admin sees no submit form');

  // An encode paced at real time (-re): ~15 s of progress.
  const submitted = await api('POST', '/api/jobs', {
    program: 'ffmpeg',
    args: ['-nostdin', '-y', '-re', '-f', 'lavfi', '-i', 'testsrc=duration=15:size=320x240:rate=25',
      '-c:v', 'libx264', '-preset', 'ultrafast', 'out.mp4'],
    labels: { name: 'dashboard-encode', kind: 'encode' },
  });
  const id = submitted.id;
  const row = page.locator(`#job-rows tr[data-id="${id}"]`);
  await row.waitFor({ state: 'attached', timeout: 30000 });
  const bar = row.locator('progress');
  const first = await until('a progress value', async () => {
    const value = await bar.evaluate((b) => (b.hidden ? 0 : b.value));
    return value > 0 ? value : 0;
  }, 60000);
  const later = await until('the progress bar to move', async () => {
    const value = await bar.evaluate((b) => b.value);
    return value > first ? value : 0;
  }, 60000);
  report.progress = { first, later, text: await row.locator('.prog-text').textContent() };
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard-1280x800.png') });
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard-1280x800-full.png'), fullPage: true });

  // Open the job with the keyboard-reachable id button, then Cancel.
  await row.locator('button[data-id]').click();
  await page.locator('#detail').waitFor({ state: 'visible' });
  const cancel = page.locator('#detail-actions button[data-action="cancel"]');
  await cancel.waitFor({ state: 'visible', timeout: 10000 });
  await cancel.click();
  const finished = await until('the job to end cancelled', async () => {
    const view = await api('GET', `/api/jobs/${id}`);
    return view.state === 'finished' ? view : null;
  }, 60000);
  if (finished.outcome.kind !== 'cancelled') throw new Error(`outcome ${JSON.stringify(finished.outcome)}`);
  await until('the row to show the cancel', async () =>
    (await row.locator('td.state').textContent()).includes('cancelled'), 30000);
  report.outcome = finished.outcome.kind;

  // The label filter: the daemon filters the list, the page only the jobs that arrive live.
  const labelled = async (project) =>
    (await api('POST', '/api/jobs', { program: 'true', labels: { project, kind: 'filter-test' } })).id;
  const trailer = [await labelled('trailer'), await labelled('trailer')];
  await labelled('feature');
  const rowIds = () => page.$$eval('#job-rows tr', (rows) => rows.map((r) => Number(r.dataset.id)));
  const listed = page.waitForRequest((r) => r.url().includes('/api/jobs?') && r.url().includes('label=project%3Dtrailer'));
  await page.fill('#filter-label', 'project=trailer');
  await page.click('#filters button[type="submit"]');
  await listed;
  await until('only the trailer jobs listed', async () =>
    JSON.stringify(await rowIds()) === JSON.stringify([...trailer].reverse()), 15000);
  // Live: a job without the label stays off the table; one with it comes in (after it, in event order).
  const feature = await labelled('feature');
  const live = await labelled('trailer');
  await until('the live trailer job to appear', async () => (await rowIds()).includes(live), 15000);
  await page.waitForTimeout(REFRESH_SETTLE);
  if ((await rowIds()).includes(feature)) throw new Error('a job without the label appeared live');
  // A filter the daemon refuses empties the table and says why.
  const seen = errors.length;
  await page.fill('#filter-label', 'project');
  await page.click('#filters button[type="submit"]');
  await until('the refusal shown', async () => (await page.textContent('#notice')).includes('KEY=VALUE'), 15000);
  if ((await rowIds()).length) throw new Error('a refused filter left rows');
  // The browser logs the 400 it was asked for; that one is expected, nothing else is.
  errors.splice(seen, Infinity, ...errors.slice(seen).filter((e) => !/status of 400/.test(e)));
  await page.fill('#filter-label', '');
  await page.click('#filters button[type="submit"]');
  await until('every job listed again', async () => (await rowIds()).includes(id) && (await rowIds()).includes(feature), 15000);
  if (await page.textContent('#notice')) throw new Error('the refusal notice stayed');
  report.labelFilter = { trailer: [...trailer, live], keptOut: feature };

  // A chart has data: the memory chart's uPlot holds more than one point.
  report.chartPoints = await until('chart points', async () => {
    const points = await page.evaluate(() => window.auraDashboard.chartPoints());
    return points.mem > 1 ? points : null;
  }, 30000);

  // The janitor card: a row per task, and the admin's "Run now" runs them (the note says what was freed).
  await until('janitor rows', async () => (await page.locator('#janitor-rows tr').count()) === 8, 40000);
  await page.click('#janitor-run');
  report.janitor = await until('janitor run', async () => {
    const note = await page.textContent('#janitor-note');
    return note && note.startsWith('done') ? note : null;
  }, 30000);

  // A single node: neither the nodes card nor the jobs' node column (fleet mode shows both).
  if (await page.isVisible('#nodes-card')) throw new Error('a single node shows a nodes card');
  if (await page.isVisible('#jobs thead .node-col')) throw new Error('a single node shows a node column');
  report.nodeRows = await page.evaluate(() => window.auraDashboard.nodes());

  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(500);
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard-390x844.png') });
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard-390x844-full.png'), fullPage: true });

  // Sign out, back to the form.
  await page.click('#sign-out');
  await page.locator('#token').waitFor({ state: 'visible', timeout: 10000 });

  // A read-only token: no job controls, no submit form, no drain.
  const readContext = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const reader = await readContext.newPage();
  watch(reader, errors);
  await signIn(reader, READ_TOKEN);
  const readRow = reader.locator(`#job-rows tr[data-id="${id}"]`);
  await readRow.waitFor({ state: 'attached', timeout: 30000 });
  await readRow.locator('button[data-id]').click();
  await reader.locator('#detail').waitFor({ state: 'visible' });
  await reader.waitForTimeout(500);
  for (const selector of ['#detail-actions button[data-action="cancel"]', '#detail-actions button[data-action="retry"]',
    '#submit-box', '#drain', '#undrain', '#janitor-run']) {
    if (await reader.isVisible(selector)) throw new Error(`a read token sees ${selector}`);
  }
  if ((await reader.locator('button:visible', { hasText: /^(Cancel|Kill|Pause|Resume|Retry|Drain)$/ }).count()) > 0) {
    throw new Error('a read token sees a control');
  }
  await reader.screenshot({ path: join(ARTIFACTS, 'dashboard-read-only.png') });
  report.readOnly = 'no controls';
  await readContext.close();
  await context.close();
} finally {
  await browser.close();
}
if (errors.length) {
  console.error(errors.join('\n'));
  process.exit(1);
}
console.log(JSON.stringify({ dashboard: report }));
