// The dashboard open for AURA_LEAK_SECONDS while a short job starts and ends every second: after a
// 20 s warm-up and at the end, a full GC and the page's JS heap, DOM nodes and event listeners (DevTools
// protocol). The table is filled to its cap (200 rows) before the page opens, so that a flat page is
// flat from the first sample. Then the page is closed and the daemon's open event streams must return
// to what they were before it opened.

import { launch, api, watch, signIn, until, sleep, openStreams, TOKEN } from './common.mjs';

const SECONDS = Number(process.env.AURA_LEAK_SECONDS || 120);
const WARM_UP = 20;
const MIB = 1024 * 1024;

// More jobs than the table keeps, all done before the page opens.
const filler = Array.from({ length: 210 }, () => ({ program: 'true', labels: { kind: 'filler' } }));
await api('POST', '/api/jobs/batch', { jobs: filler });
await until('the filler jobs to finish', async () => {
  const page = await api('GET', '/api/jobs?state=queued,running,stopping&limit=1');
  return page.jobs.length === 0;
}, 120000);

const before = await openStreams();
const browser = await launch();
const errors = [];
let submitted = 0, failedSubmits = 0;
let churn = null;
const samples = {};
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  watch(page, errors);
  await signIn(page, TOKEN);
  await until('a full table', async () => (await page.evaluate(() => window.auraDashboard.rows())) >= 200, 30000);

  // A job every second, each ending half a second later.
  churn = setInterval(() => {
    api('POST', '/api/jobs', { program: 'sleep', args: ['0.5'], labels: { kind: 'churn' } })
      .then(() => { submitted++; })
      .catch(() => { failedSubmits++; });
  }, 1000);

  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');
  const sample = async () => {
    await cdp.send('HeapProfiler.collectGarbage');
    await cdp.send('HeapProfiler.collectGarbage');
    const usage = await cdp.send('Runtime.getHeapUsage');
    const { metrics } = await cdp.send('Performance.getMetrics');
    const m = Object.fromEntries(metrics.map(({ name, value }) => [name, value]));
    const dashboard = await page.evaluate(() => ({
      rows: window.auraDashboard.rows(),
      timers: window.auraDashboard.timers(),
      points: window.auraDashboard.chartPoints(),
    }));
    return {
      heapUsed: m.JSHeapUsedSize, runtimeHeapUsed: usage.usedSize, nodes: m.Nodes,
      listeners: m.JSEventListeners, documents: m.Documents, ...dashboard,
    };
  };
  const started = Date.now();
  await sleep(WARM_UP * 1000);
  samples.start = await sample();
  // Every 20 s in between, the heap and nodes alone: the trend, for the benchmark and for a reader
  // telling a leak from the chart rings filling up (they are full after 5 minutes).
  samples.series = [];
  while (SECONDS * 1000 - (Date.now() - started) > 25000) {
    await sleep(20000);
    const s = await sample();
    samples.series.push({ t: Math.round((Date.now() - started) / 1000), heapUsed: s.heapUsed, nodes: s.nodes });
  }
  await sleep(Math.max(0, SECONDS * 1000 - (Date.now() - started)));
  samples.end = await sample();
  clearInterval(churn);
  churn = null;
  samples.seconds = SECONDS;
  samples.jobs = submitted;

  // Flat: the heap within 10 % or 1 MiB of where it was after the warm-up (whichever is larger), DOM
  // nodes within 50, listeners within 20, the table at its cap. The chart rings fill during the first
  // 5 minutes (about +0.3 MB, then flat: a 420 s run's `series` shows it), inside that margin.
  const { start, end } = samples;
  const heapBound = Math.max(start.heapUsed * 1.10, start.heapUsed + MIB);
  const failures = [];
  if (end.heapUsed > heapBound) failures.push(`JS heap grew from ${start.heapUsed} to ${end.heapUsed} (bound ${Math.round(heapBound)})`);
  if (end.nodes > start.nodes + 50) failures.push(`DOM nodes grew from ${start.nodes} to ${end.nodes}`);
  if (end.listeners > start.listeners + 20) failures.push(`listeners grew from ${start.listeners} to ${end.listeners}`);
  if (end.rows > 200) failures.push(`${end.rows} rows`);
  if (submitted < SECONDS / 4) failures.push(`only ${submitted} jobs submitted (${failedSubmits} failed)`);
  // The benchmark reads this line.
  console.log(JSON.stringify({ dashboard_leak: samples }));
  if (failures.length) throw new Error(failures.join('; '));

  // The page holds one event stream; closing it must give the slot back.
  const open = await openStreams();
  if (open < before + 1) throw new Error(`the page has no event stream open (${before} before, ${open} now)`);
  await page.close();
  await until('the event stream to close', async () => (await openStreams()) <= before, 15000);
  samples.streams = { before, open, after: await openStreams() };
  console.log(JSON.stringify({ dashboard_streams: samples.streams }));
  await context.close();
} finally {
  if (churn) clearInterval(churn);
  await browser.close();
}
if (errors.length) {
  console.error(errors.join('\n'));
  process.exit(1);
}
