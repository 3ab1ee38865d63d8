// Aura dashboard. Vanilla JS, no build step, served from the binary.
//
// Made to stay open for days without growing: every collection is capped (job rows, event lists, log
// tail, chart rings), rows and charts are updated in place (uPlot `setData`, never a new chart per
// sample), listeners are attached once to containers (event delegation) and never per row, the one
// EventSource is replaced — not added to — on reconnect, and every timer lives in `timers` so that
// signing out clears them all. Closing the page closes the stream, which frees its slot on the daemon.

const MAX_ROWS = 200;          // job rows kept (the newest)
const MAX_EVENTS = 200;        // a job's event list
const MAX_ENGINE_EVENTS = 100; // engine event list
const MAX_LOG_CHARS = 32768;   // log tail
const RING = 150;              // chart points: 5 minutes at one sample every 2 s
const SYSTEM_EVERY = 2000, STATUS_EVERY = 5000, DIAG_EVERY = 10000, LOG_EVERY = 2000, JANITOR_EVERY = 30000;
const NODES_EVERY = 3000;      // the fleet's nodes (fleet mode only)
const MAX_NODES = 64;          // node rows kept
const REFRESH_DELAY = 250;     // coalesces a burst of job events into one round of reads
const MAX_REFRESH = 40;        // more changed jobs than this at once: reload the list instead

const $ = (id) => document.getElementById(id);

/** Who is signed in ({name, scope}), or null. */
let me = null;
/** id → {view, row} for the rows on the table; at most MAX_ROWS. */
const jobs = new Map();
/** The job shown in the detail panel. */
let selected = null;
/** The all-jobs event stream and its reconnect state. */
let stream = null, streamRetry = 1000;
/** Job ids whose rows need a fresh read, collected between flushes. */
const dirty = new Set();
let listGeneration = 0;
/** Every interval and timeout of a signed-in page, cleared on sign-out. */
const timers = new Map();
/** The log tail: where to read next, and for which job/stream. */
let logState = null;
/** Whether the reader picked the log stream; until then an empty stdout gives way to stderr (FFmpeg). */
let logChosen = false;
const seenEngine = new Set();
/** Fleet mode: node id → its row on the nodes card (at most MAX_NODES), and node id → name. */
const nodeRows = new Map();
let nodeNames = new Map();
/** Whether the jobs table shows its node column: in fleet mode, or once a job names a node. */
let nodeColumn = false;

// ---------------------------------------------------------------- helpers

function setTimer(name, fn, ms, repeat) {
  clearTimer(name);
  timers.set(name, { id: repeat ? setInterval(fn, ms) : setTimeout(() => { timers.delete(name); fn(); }, ms), repeat });
}
function clearTimer(name) {
  const t = timers.get(name);
  if (!t) return;
  if (t.repeat) clearInterval(t.id); else clearTimeout(t.id);
  timers.delete(name);
}
function clearTimers() { for (const name of [...timers.keys()]) clearTimer(name); }

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.code = problem && problem.code;
  }
}

/** A call to the API with the session cookie; JSON in and out; a problem document becomes ApiError. */
async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  const type = response.headers.get('content-type') || '';
  const data = type.includes('json') ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && path !== '/api/session') signedOut();
    throw error;
  }
  return data;
}

/** Runs `fn`; an API error is shown in the notice line instead of the console. */
async function quietly(fn) {
  try { return await fn(); } catch (e) { notice(e.message || String(e)); return undefined; }
}

function notice(text) { $('notice').textContent = text || ''; }

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  return `${n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)} ${UNITS[i]}`;
}
function secs(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return '';
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
}
function time(text) {
  const d = new Date(text);
  return Number.isNaN(d.getTime()) ? String(text) : d.toLocaleTimeString();
}
function summary(detail) {
  if (detail === undefined || detail === null) return '';
  // Most events say why in words; the rest (and kinds this page does not know) show their JSON.
  const words = typeof detail === 'object' && (detail.reason || detail.message);
  const text = typeof words === 'string' ? words : (typeof detail === 'string' ? detail : JSON.stringify(detail));
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}
function allows(scope) {
  const rank = { read: 0, submit: 1, admin: 2 };
  return !!me && rank[me.scope] >= rank[scope];
}

// ---------------------------------------------------------------- sign-in

async function start() {
  wireOnce();
  try {
    me = await api('GET', '/api/session');
  } catch (e) {
    me = null;
  }
  if (me) signedIn(); else showSignIn();
}

function showSignIn() {
  $('sign-in').hidden = false;
  $('main').hidden = true;
  $('who').hidden = true;
  $('token').focus();
}

function signedIn() {
  $('sign-in').hidden = true;
  $('main').hidden = false;
  $('who').hidden = false;
  $('who-name').textContent = `${me.name} (${me.scope})`;
  for (const e of document.querySelectorAll('[data-scope]')) e.hidden = !allows(e.dataset.scope);
  notice('');
  ensureCharts();
  loadJobs();
  openStream();
  loadEngineEvents();
  pollSystem(true);
  pollStatus();
  pollDiagnostics();
  pollJanitor();
  pollNodes();
  setTimer('system', () => pollSystem(false), SYSTEM_EVERY, true);
  setTimer('status', pollStatus, STATUS_EVERY, true);
  setTimer('diag', pollDiagnostics, DIAG_EVERY, true);
  setTimer('janitor', pollJanitor, JANITOR_EVERY, true);
  setTimer('nodes', pollNodes, NODES_EVERY, true);
}

/** Back to the sign-in form: the stream closed, every timer cleared, the rows dropped. */
function signedOut() {
  if (!me) return;
  me = null;
  closeStream();
  clearTimers();
  closeDetail();
  for (const { row } of jobs.values()) row.remove();
  jobs.clear();
  dirty.clear();
  dropNodes();
  showSignIn();
}

async function signIn(event) {
  event.preventDefault();
  const input = $('token');
  $('sign-in-error').textContent = '';
  try {
    me = await api('POST', '/api/session', { token: input.value.trim() });
    input.value = '';
    signedIn();
  } catch (e) {
    $('sign-in-error').textContent = e.status === 401 ? 'That token is not valid here.' : e.message;
  }
}

async function signOut() {
  await quietly(() => api('DELETE', '/api/session'));
  signedOut();
}

// ---------------------------------------------------------------- wiring (once per page)

let wired = false;
function wireOnce() {
  if (wired) return;
  wired = true;
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', signOut);
  $('filters').addEventListener('submit', (e) => { e.preventDefault(); loadJobs(); });
  $('filter-state').addEventListener('change', loadJobs);
  // One listener for every row, present and future.
  $('job-rows').addEventListener('click', (e) => {
    const button = e.target.closest('button[data-id]');
    if (button) select(Number(button.dataset.id));
  });
  $('detail-close').addEventListener('click', closeDetail);
  $('detail-actions').addEventListener('click', (e) => {
    const button = e.target.closest('button[data-action]');
    if (button && selected !== null) act(button.dataset.action);
  });
  $('priority-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (selected === null) return;
    const priority = Number($('d-priority').value);
    quietly(async () => { showDetailView(await api('POST', `/api/jobs/${selected}/priority`, { priority })); });
  });
  $('log-stream').addEventListener('change', () => { logChosen = true; if (selected !== null) startLog(selected); });
  $('submit-form').addEventListener('submit', submitJob);
  $('drain').addEventListener('click', () => quietly(async () => showStatus(await api('POST', '/api/drain'))));
  $('janitor-run').addEventListener('click', () => quietly(async () => {
    $('janitor-run').disabled = true;
    setText($('janitor-note'), 'running…');
    try {
      const answer = await api('POST', '/api/janitor/run', {});
      const freed = (answer.reports || []).reduce((n, r) => n + (r.bytes_freed || 0), 0);
      setText($('janitor-note'), `done: ${bytes(freed)} freed`);
    } finally {
      $('janitor-run').disabled = false;
      pollJanitor();
    }
  }));
  $('undrain').addEventListener('click', () => quietly(async () => showStatus(await api('POST', '/api/undrain'))));
  // Leaving the page ends the stream at once (the browser would too; this makes it explicit).
  window.addEventListener('pagehide', closeStream);
  new ResizeObserver(resizeCharts).observe($('charts'));
}

// ---------------------------------------------------------------- jobs table

function stateFilter() { return $('filter-state').value; }
/** The label filter as typed: `k=v` pairs, comma-separated, all of which must match (the daemon checks them). */
function labelFilter() {
  return $('filter-label').value.split(',').map((pair) => pair.trim()).filter(Boolean);
}
/**
 * The label pairs of the list on the table (what the daemon filtered it by), as [key, value]; null while
 * the daemon refuses the filter typed, so that the table stays empty rather than filling from live changes.
 */
let listLabels = [];
/** The notice a refused filter put up, taken down once a filter is accepted. */
let filterNotice = null;
/**
 * Whether a job read on its own (a live change) belongs on the table. The daemon filtered the list by
 * labels itself; this repeats that check only for jobs arriving over the event stream, so that a new job
 * without the labels does not appear. A job's labels never change.
 */
function matches(view) {
  const state = stateFilter();
  if (state && view.state !== state) return false;
  if (listLabels === null) return false;
  const labels = view.spec.labels || {};
  return listLabels.every(([key, value]) => Object.hasOwn(labels, key) && labels[key] === value);
}

/** Reads the newest MAX_ROWS jobs matching the state and label filters and rebuilds the table from them. */
async function loadJobs() {
  const generation = ++listGeneration;
  const state = stateFilter();
  const pairs = labelFilter();
  const query = new URLSearchParams({ limit: String(MAX_ROWS) });
  if (state) query.set('state', state);
  // One `label=k=v` parameter each: the daemon filters by every one before it picks the newest rows.
  for (const pair of pairs) query.append('label', pair);
  let page;
  try {
    page = await api('GET', `/api/jobs?${query}`);
  } catch (e) {
    if (generation !== listGeneration || !me) return;
    filterNotice = e.message || String(e);
    notice(filterNotice);
    // A filter the daemon refuses (not k=v, a key no job can carry) leaves no stale rows behind it;
    // any other failure keeps the table as it was, as a failed refresh always has.
    if (e.status === 400) {
      listLabels = null;
      for (const id of [...jobs.keys()]) dropRow(id);
      updateEmpty();
    }
    return;
  }
  if (!page || generation !== listGeneration || !me) return;
  if (filterNotice !== null && $('notice').textContent === filterNotice) notice('');
  filterNotice = null;
  listLabels = pairs.map((pair) => {
    const at = pair.indexOf('=');
    return [pair.slice(0, at), pair.slice(at + 1)];
  });
  const keep = new Set();
  for (const view of page.jobs) {
    keep.add(view.id);
    upsert(view);
  }
  for (const id of [...jobs.keys()]) if (!keep.has(id)) dropRow(id);
  updateEmpty();
}

function dropRow(id) {
  const entry = jobs.get(id);
  if (!entry) return;
  entry.row.remove();
  jobs.delete(id);
}

function updateEmpty() { $('jobs-empty').hidden = jobs.size > 0; }

/** Puts a job view on the table: its row updated in place, or a new row at its place by id (newest first). */
function upsert(view) {
  if (selected === view.id) showDetailView(view);
  let entry = jobs.get(view.id);
  if (!matches(view)) {
    if (entry) dropRow(view.id);
    updateEmpty();
    return;
  }
  if (!entry) {
    // A full table takes a new job only if it is newer than the oldest row, which then goes.
    if (jobs.size >= MAX_ROWS) {
      const oldest = Math.min(...jobs.keys());
      if (view.id < oldest) return;
      dropRow(oldest);
    }
    entry = { view, row: newRow(view.id) };
    jobs.set(view.id, entry);
    insertRow(entry.row, view.id);
  }
  entry.view = view;
  fillRow(entry.row, view);
  updateEmpty();
}

function insertRow(row, id) {
  const body = $('job-rows');
  let before = null;
  for (const other of body.children) {
    if (Number(other.dataset.id) < id) { before = other; break; }
  }
  body.insertBefore(row, before);
}

function newRow(id) {
  const row = el('tr');
  row.dataset.id = String(id);
  const idCell = el('td');
  const open = el('button', 'link', `#${id}`);
  open.type = 'button';
  open.dataset.id = String(id);
  open.setAttribute('aria-label', `Show job ${id}`);
  idCell.append(open);
  const progress = el('td', 'prog');
  const bar = el('progress');
  bar.max = 100;
  bar.hidden = true;
  progress.append(bar, el('span', 'prog-text'));
  row.append(idCell, el('td', 'cmd'), el('td', 'state'), progress, el('td', 'mem'), el('td', 'wait'), el('td', 'labels'),
    el('td', 'node-col'));
  return row;
}

function command(spec) {
  return [spec.program, ...(spec.args || [])].join(' ');
}
function outcomeName(view) { return view.outcome ? view.outcome.kind : null; }
function peak(view) {
  if (view.live && view.live.memory_peak !== undefined && view.live.memory_peak !== null) return view.live.memory_peak;
  if (view.accounting && view.accounting.memory_peak !== undefined) return view.accounting.memory_peak;
  return null;
}
function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(', ');
}

function fillRow(row, view) {
  const cells = row.children;
  const name = (view.spec.labels || {}).name;
  const cmd = command(view.spec);
  setText(cells[1], name ? `${name} — ${cmd}` : cmd);
  cells[1].title = cmd;
  const outcome = outcomeName(view);
  setText(cells[2], outcome ? `${view.state}: ${outcome}` : view.state);
  cells[2].className = `state state-${view.state}${outcome ? (outcome === 'succeeded' ? ' outcome-ok' : ' outcome-bad') : ''}`;
  const progress = (view.live && view.live.progress) || (view.accounting && view.accounting.progress) || null;
  showProgress(row, progress);
  setText(cells[4], bytes(peak(view)));
  setText(cells[5], view.waiting || '');
  setText(cells[6], labelsText(view.spec.labels));
  if (view.node) showNodeColumn();
  setText(cells[7], view.node ? nodeName(view.node) : '');
  row.classList.toggle('selected', selected === view.id);
}

function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

/** A job's progress in its row: the bar (percent) and fps, speed and ETA. */
function showProgress(row, p) {
  const cell = row.children[3];
  const bar = cell.firstChild, text = cell.lastChild;
  if (!p) { bar.hidden = true; setText(text, ''); return; }
  const parts = [];
  if (p.percent !== undefined && p.percent !== null) {
    bar.hidden = false;
    bar.value = p.percent;
    parts.push(`${p.percent.toFixed(1)}%`);
  } else {
    bar.hidden = true;
  }
  if (p.fps) parts.push(`${p.fps.toFixed(0)} fps`);
  if (p.speed) parts.push(`${p.speed.toFixed(2)}×`);
  if (p.eta_secs !== undefined && p.eta_secs !== null && !p.done) parts.push(`ETA ${secs(p.eta_secs)}`);
  const line = parts.join(' · ');
  setText(text, line);
  bar.setAttribute('aria-label', line || 'progress');
}

// ---------------------------------------------------------------- the event stream

/** Each kind of event the stream sends, and the one function that handles it (declared below). */
const STREAM_HANDLERS = [
  ['open', onOpen], ['job', onJobEvent], ['progress', onProgress], ['engine', onEngineEvent],
  ['lagged', onLagged], ['end', onEnd], ['error', onStreamError],
];

function openStream() {
  closeStream();
  const source = new EventSource('/api/events/stream');
  stream = source;
  // The same functions every time: a replaced stream takes its listeners with it.
  for (const [kind, handler] of STREAM_HANDLERS) source.addEventListener(kind, handler);
}

function closeStream() {
  clearTimer('reconnect');
  if (!stream) return;
  for (const [kind, handler] of STREAM_HANDLERS) stream.removeEventListener(kind, handler);
  stream.close();
  stream = null;
  setText($('stream-state'), '');
}

function onOpen() {
  streamRetry = 1000;
  setText($('stream-state'), 'live');
}

function reconnectLater() {
  closeStream();
  if (!me) return;
  setText($('stream-state'), 'reconnecting…');
  setTimer('reconnect', async () => {
    // The session may have ended (a daemon restart forgets sessions): back to the sign-in then.
    let who = null;
    try {
      who = await api('GET', '/api/session');
    } catch (e) {
      if (e.status === 401) { signedOut(); return; }
      reconnectLater();
      return;
    }
    if (!who) { signedOut(); return; }
    if (!me) return;
    openStream();
    loadJobs();
  }, streamRetry, false);
  streamRetry = Math.min(streamRetry * 2, 30000);
}

function onStreamError() {
  // EventSource retries by itself (with Last-Event-ID) unless the answer was an error; then it is CLOSED.
  if (stream && stream.readyState === EventSource.CLOSED) reconnectLater();
  else setText($('stream-state'), 'reconnecting…');
}
function onLagged() { reconnectLater(); }
function onEnd() { reconnectLater(); }

function parse(event) {
  try { return JSON.parse(event.data); } catch (e) { return null; }
}

function onJobEvent(event) {
  const record = parse(event);
  if (!record || record.job_id === undefined) return;
  if (selected === record.job_id) appendEvent($('detail-events'), record, MAX_EVENTS);
  markDirty(record.job_id);
}

function onProgress(event) {
  const update = parse(event);
  if (!update) return;
  const entry = jobs.get(update.job_id);
  if (!entry) return;
  showProgress(entry.row, update.progress);
}

function onEngineEvent(event) {
  const record = parse(event);
  if (record) addEngineEvent(record);
}

/** A job changed: its row is read again shortly, together with whatever else changed meanwhile. */
function markDirty(id) {
  dirty.add(id);
  if (!timers.has('flush')) setTimer('flush', flushDirty, REFRESH_DELAY, false);
}

async function flushDirty() {
  if (!me) { dirty.clear(); return; }
  if (dirty.size > MAX_REFRESH) {
    dirty.clear();
    await loadJobs();
    return;
  }
  const ids = [...dirty];
  dirty.clear();
  await Promise.all(ids.map(async (id) => {
    try {
      upsert(await api('GET', `/api/jobs/${id}`));
    } catch (e) {
      if (e.status === 404) dropRow(id);
    }
  }));
  updateEmpty();
  // Jobs started or ended: the node's counts in the header follow without waiting for the next poll
  // (at most one extra read a second).
  if (!timers.has('status-soon')) {
    setTimer('status-soon', pollStatus, Math.max(0, 1000 - (Date.now() - lastStatusAt)), false);
  }
}

// ---------------------------------------------------------------- job detail

async function select(id) {
  if (selected !== null && jobs.has(selected)) jobs.get(selected).row.classList.remove('selected');
  selected = id;
  $('detail').hidden = false;
  $('detail-title').textContent = `Job #${id}`;
  const list = $('detail-events');
  list.replaceChildren();
  $('log').textContent = '';
  const entry = jobs.get(id);
  if (entry) { entry.row.classList.add('selected'); showDetailView(entry.view); }
  const view = await quietly(() => api('GET', `/api/jobs/${id}`));
  if (selected !== id || !view) return;
  showDetailView(view);
  const events = await quietly(() => api('GET', `/api/jobs/${id}/events`));
  if (selected !== id || !events) return;
  list.replaceChildren();
  for (const record of events.slice(-MAX_EVENTS)) appendEvent(list, record, MAX_EVENTS);
  startLog(id);
  $('detail').scrollIntoView({ block: 'nearest' });
}

function closeDetail() {
  if (selected !== null && jobs.has(selected)) jobs.get(selected).row.classList.remove('selected');
  selected = null;
  logState = null;
  clearTimer('log');
  $('detail').hidden = true;
  $('detail-events').replaceChildren();
  $('detail-fields').replaceChildren();
  $('log').textContent = '';
}

function showDetailView(view) {
  if (!view || selected !== view.id) return;
  const fields = [
    ['Command', command(view.spec)],
    ['State', outcomeName(view) ? `${view.state}: ${outcomeName(view)}` : view.state],
    ['Priority', String(view.spec.priority)],
    ['Submitted', `${time(view.submitted_at)}${view.submitted_by ? ` by ${view.submitted_by}` : ''}`],
    ['Attempt', String(view.attempt)],
    ['Labels', labelsText(view.spec.labels) || '–'],
    ['Peak memory', bytes(peak(view))],
  ];
  if (view.waiting) fields.push(['Waiting for', view.waiting]);
  if (view.live && view.live.memory_current) fields.push(['Memory now', bytes(view.live.memory_current)]);
  if (view.node) fields.push(['Node', nodeName(view.node)]);
  if (view.retried_as) fields.push(['Retried as', `#${view.retried_as}`]);
  if (view.retry_of) fields.push(['Retry of', `#${view.retry_of}`]);
  const dl = $('detail-fields');
  const nodes = [];
  for (const [k, v] of fields) nodes.push(el('dt', null, k), el('dd', null, v));
  dl.replaceChildren(...nodes);
  if (document.activeElement !== $('d-priority')) $('d-priority').value = String(view.spec.priority);
  // What the buttons can do in this state, for a token that may act on this job.
  const mine = allows('admin') || (allows('submit') && me && view.submitted_by === me.name);
  $('detail-actions').hidden = !mine;
  const live = ['queued', 'held', 'running', 'paused', 'stopping'].includes(view.state);
  const can = {
    cancel: live, kill: live,
    pause: view.state === 'running', resume: view.state === 'paused',
    hold: view.state === 'queued', release: view.state === 'held',
    retry: view.state === 'finished',
  };
  for (const button of $('detail-actions').querySelectorAll('button[data-action]')) {
    button.hidden = !can[button.dataset.action];
  }
  $('priority-form').hidden = !['queued', 'held'].includes(view.state);
}

async function act(action) {
  const id = selected;
  await quietly(async () => {
    const view = await api('POST', `/api/jobs/${id}/${action}`);
    notice(`${action}: job #${id} ${view && view.id !== id ? `→ new job #${view.id}` : 'done'}`);
    if (view) { upsert(view); if (view.id === id) showDetailView(view); }
    markDirty(id);
  });
}

function appendEvent(list, record, max) {
  const item = el('li');
  const when = el('time', null, time(record.at));
  when.dateTime = String(record.at);
  item.append(when, el('strong', null, record.kind), document.createTextNode(` ${summary(record.detail)}`));
  list.append(item);
  while (list.childElementCount > max) list.firstElementChild.remove();
}

/** The log tail: the last 16 KiB of the chosen stream, then what the job writes, polled. */
async function startLog(id) {
  clearTimer('log');
  const streamName = $('log-stream').value;
  const state = { id, stream: streamName, offset: 0 };
  logState = state;
  $('log').textContent = '';
  // An offset past the end answers the end: the tail starts 16 KiB before it.
  let end = await readLog(state, Number.MAX_SAFE_INTEGER, 1, true);
  if (logState !== state) return;
  if (end === 0 && !logChosen && state.stream === 'stdout') {
    const other = { ...state, stream: 'stderr' };
    const errEnd = await readLog(other, Number.MAX_SAFE_INTEGER, 1, true);
    if (logState !== state) return;
    if (errEnd > 0) { state.stream = 'stderr'; $('log-stream').value = 'stderr'; end = errEnd; }
  }
  if (end !== null) state.offset = Math.max(0, end - 16384);
  await pollLog();
  if (logState === state) setTimer('log', pollLog, LOG_EVERY, true);
}

async function readLog(state, offset, max, probe) {
  const query = new URLSearchParams({ stream: state.stream, offset: String(offset), max: String(max) });
  try {
    const response = await fetch(`/api/jobs/${state.id}/logs?${query}`, { credentials: 'same-origin' });
    if (!response.ok) return null;
    const text = probe ? '' : await response.text();
    return probe ? Number(response.headers.get('aura-log-offset')) : { text, next: Number(response.headers.get('aura-log-next-offset')) };
  } catch (e) {
    return null;
  }
}

async function pollLog() {
  const state = logState;
  if (!state) return;
  const chunk = await readLog(state, state.offset, 65536, false);
  if (logState !== state || !chunk) return;
  state.offset = chunk.next;
  if (chunk.text) {
    const pre = $('log');
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    // A carriage return alone (FFmpeg's status line rewriting itself) starts a new line here.
    let text = pre.textContent + chunk.text.replace(/\r(?!\n)/g, '\n');
    if (text.length > MAX_LOG_CHARS) text = text.slice(text.length - MAX_LOG_CHARS);
    pre.textContent = text;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
  const view = jobs.get(state.id);
  if (view && view.view.state === 'finished' && !chunk.text) clearTimer('log');
}

// ---------------------------------------------------------------- submit

async function submitJob(event) {
  event.preventDefault();
  const labels = {};
  for (const pair of $('s-labels').value.split(',')) {
    const [k, ...v] = pair.split('=');
    if (k.trim()) labels[k.trim()] = v.join('=').trim();
  }
  const name = $('s-name').value.trim();
  if (name) labels.name = name;
  const spec = {
    program: $('s-program').value.trim(),
    args: $('s-args').value.split('\n').map((a) => a.replace(/\r$/, '')).filter((a) => a.length > 0),
    labels,
    priority: Number($('s-priority').value) || 0,
  };
  const result = $('submit-result');
  result.textContent = '';
  try {
    const view = await api('POST', '/api/jobs', spec);
    result.textContent = `Submitted job #${view.id}.`;
    upsert(view);
  } catch (e) {
    result.textContent = `Not submitted: ${e.message}`;
  }
}

// ---------------------------------------------------------------- engine events

async function loadEngineEvents() {
  // The log is read oldest first: page through it (a bounded number of pages), keeping the newest.
  let after = 0;
  for (let page = 0; page < 20; page++) {
    const records = await quietly(() => api('GET', `/api/events?after=${after}&limit=1000`));
    if (!records || !me) return;
    for (const record of records.slice(-MAX_ENGINE_EVENTS)) addEngineEvent(record);
    if (records.length < 1000) return;
    after = records[records.length - 1].seq;
  }
}

function addEngineEvent(record) {
  if (seenEngine.has(record.seq)) return;
  seenEngine.add(record.seq);
  const list = $('engine-events');
  const item = el('li');
  item.dataset.seq = String(record.seq);
  const when = el('time', null, time(record.at));
  when.dateTime = String(record.at);
  // Kinds this page does not know (new ones appear) are shown the same way: kind and detail.
  item.append(when, el('strong', null, record.kind), document.createTextNode(` ${summary(record.detail)}`));
  list.prepend(item);
  while (list.childElementCount > MAX_ENGINE_EVENTS) {
    const last = list.lastElementChild;
    seenEngine.delete(Number(last.dataset.seq));
    last.remove();
  }
  // Whatever was dropped from the list is forgotten by the set too: both stay at MAX_ENGINE_EVENTS.
  if (seenEngine.size > MAX_ENGINE_EVENTS * 2) {
    seenEngine.clear();
    for (const li of list.children) seenEngine.add(Number(li.dataset.seq));
  }
}

// ---------------------------------------------------------------- admission, diagnostics

function fill(dl, pairs) {
  const nodes = [];
  for (const [k, v] of pairs) if (v !== undefined && v !== null && v !== '') nodes.push(el('dt', null, k), el('dd', null, String(v)));
  dl.replaceChildren(...nodes);
}

function showStatus(status) {
  if (!status) return;
  const paused = status.paused ? `paused: ${status.paused}` : (status.draining ? 'draining' : 'admitting');
  setText($('node-summary'), `${status.backend} · ${status.running}/${status.max_concurrent} running · ${status.queued} queued · ${paused}`);
  $('drain').hidden = !allows('admin') || status.draining;
  $('undrain').hidden = !allows('admin') || !status.draining;
  lastStatus = status;
}
let lastStatus = null;

let lastStatusAt = 0;
async function pollStatus() {
  lastStatusAt = Date.now();
  const [status, use, leases] = await Promise.all([
    quietly(() => api('GET', '/api/status')),
    quietly(() => api('GET', '/api/metrics/utilization')),
    quietly(() => api('GET', '/api/leases')),
  ]);
  if (!me) return;
  showStatus(status);
  if (use) {
    const cap = use.capacity || {};
    fill($('admission'), [
      ['State', use.admission_paused ? `paused: ${use.paused_reason || ''}` : (status && status.draining ? 'drained' : 'admitting')],
      ['Running', `${use.running} of ${use.max_concurrent}`],
      ['Queued', use.queued],
      ['Memory', `${bytes(use.reserved_memory_bytes)} reserved of ${bytes(cap.memory_bytes)}`],
      ['CPU', `${(use.reserved_cpu_cores || 0).toFixed(2)} cores reserved of ${((cap.cpu_millis || 0) / 1000).toFixed(1)}`],
      ['Disk', `${bytes(use.reserved_disk_bytes)} reserved of ${bytes(cap.disk_bytes)}`],
      ['GPUs', (cap.gpus || []).length || null],
      ['Held', status && status.held],
      ['Paused jobs', status && status.paused_jobs],
      ['Throttled', status && status.throttled],
      ['Memory critical', use.memory_critical ? 'yes' : null],
    ]);
    const limits = Object.entries(use.limits || {}).map(([name, l]) =>
      el('li', null, `${name}: ${l.in_use}${l.max_concurrent !== null && l.max_concurrent !== undefined ? ` of ${l.max_concurrent}` : ''}${l.per_minute ? ` · ${l.per_minute}/min` : ''}`));
    $('limits').replaceChildren(...(limits.length ? limits : [el('li', 'empty', 'none')]));
  }
  if (leases) {
    const items = leases.slice(0, 50).map((l) => el('li', null, summary(l)));
    $('leases').replaceChildren(...(items.length ? items : [el('li', 'empty', 'none')]));
  }
}

async function pollDiagnostics() {
  const d = await quietly(() => api('GET', '/api/diagnostics/resources'));
  if (!d || !me) return;
  const p = d.process || {};
  fill($('diagnostics'), [
    ['RSS', bytes(p.rss_bytes)],
    ['Open files', `${p.open_fds}${p.max_fds && p.max_fds < 1e15 ? ` of ${p.max_fds}` : ''}`],
    ['Threads', p.threads],
    ['Children', p.children],
    ['Tasks', d.tasks],
    ['Running jobs', d.running_jobs],
  ]);
  const warnings = (d.warnings || []).map((w) => el('li', null, w.message || `${w.metric}: ${w.value} over ${w.threshold}`));
  $('warnings').replaceChildren(...warnings);
}

// ---------------------------------------------------------------- janitor

/** "5m ago", "in 2h": a moment relative to now, for the janitor's table. */
function relative(at) {
  if (!at) return '-';
  const s = Math.round((Date.parse(at) - Date.now()) / 1000);
  const a = Math.abs(s);
  const span = a < 60 ? `${a}s` : a < 3600 ? `${Math.round(a / 60)}m` : a < 172800 ? `${Math.round(a / 3600)}h` : `${Math.round(a / 86400)}d`;
  return s < 0 ? `${span} ago` : `in ${span}`;
}

async function pollJanitor() {
  const j = await quietly(() => api('GET', '/api/janitor'));
  if (!j || !me) return;
  const rows = (j.tasks || []).map((t) => {
    const tr = el('tr');
    const last = t.last || {};
    tr.append(
      el('th', null, t.enabled ? t.task : `${t.task} (off)`),
      el('td', null, relative(t.last_run)),
      el('td', null, relative(t.next_run)),
      el('td', null, String(t.totals.files_removed + t.totals.archived)),
      el('td', null, bytes(t.totals.bytes_freed)),
      el('td', last.errors ? 'bad' : null, String(t.totals.errors)),
    );
    if (t.task === j.running) tr.classList.add('running');
    return tr;
  });
  $('janitor-rows').replaceChildren(...rows);
  $('janitor-run').hidden = !allows('admin');
}

// ---------------------------------------------------------------- nodes (fleet mode)

/** A node as people know it: its name where the job names it by id. */
function nodeName(node) { return nodeNames.get(node) || node; }

function showNodeColumn() {
  if (nodeColumn) return;
  nodeColumn = true;
  $('jobs').classList.add('with-nodes');
}

/** "1.2s ago", "3m05s ago": a heartbeat's age. */
function heartbeatAge(ms) {
  if (!Number.isFinite(ms)) return '–';
  return ms < 60000 ? `${(ms / 1000).toFixed(1)}s ago` : `${secs(ms / 1000)} ago`;
}

/** The fleet's nodes, polled: the card appears in fleet mode only; a single node stops asking. */
async function pollNodes() {
  const list = await quietly(() => api('GET', '/api/nodes'));
  if (!list || !me) return;
  if (!list.fleet) {
    // A daemon does not change mode while it runs.
    clearTimer('nodes');
    dropNodes();
    return;
  }
  $('nodes-card').hidden = false;
  showNodeColumn();
  const nodes = (list.nodes || []).slice(0, MAX_NODES);
  const names = new Map();
  const body = $('node-rows');
  for (const node of nodes) {
    names.set(node.id, node.name);
    let row = nodeRows.get(node.id);
    if (!row) {
      row = el('tr');
      for (let i = 0; i < 6; i++) row.append(el('td'));
      nodeRows.set(node.id, row);
    }
    // Appending moves a row already there: the rows follow the daemon's order (up first, by name).
    body.append(row);
    const cells = row.children;
    setText(cells[0], node.this_node ? `${node.name} (this node)` : node.name);
    cells[0].className = node.this_node ? 'this-node' : '';
    setText(cells[1], node.state);
    cells[1].className = `node-${node.state}`;
    setText(cells[2], (node.tags || []).join(', ') || '–');
    setText(cells[3], `${node.running} / ${node.claimed}`);
    const cap = node.capacity || {};
    setText(cells[4], `${cap.cpus} CPUs · ${bytes(cap.memory_bytes)}${cap.gpus ? ` · ${cap.gpus} GPU${cap.gpus === 1 ? '' : 's'}` : ''}`);
    setText(cells[5], heartbeatAge(node.heartbeat_age_ms));
  }
  for (const [id, row] of nodeRows) {
    if (!names.has(id)) { row.remove(); nodeRows.delete(id); }
  }
  nodeNames = names;
}

function dropNodes() {
  for (const row of nodeRows.values()) row.remove();
  nodeRows.clear();
  nodeNames = new Map();
  $('nodes-card').hidden = true;
}

// ---------------------------------------------------------------- host charts

/** A chart and its ring: one time axis and a fixed number of series, at most RING points each. */
class Ring {
  constructor(names) {
    this.data = [[], ...names.map(() => [])];
  }
  push(t, values) {
    // Samples closer than 1.5 s are skipped: the daemon's history (one a second) seeds the ring at the
    // polling pace, so the ring always spans RING × 2 s.
    if (this.data[0].length && t < this.data[0][this.data[0].length - 1] + 1.5) return false;
    this.data[0].push(t);
    for (let i = 1; i < this.data.length; i++) this.data[i].push(values[i - 1] ?? null);
    if (this.data[0].length > RING) for (const series of this.data) series.shift();
    return true;
  }
}

const charts = {};
/** A y-axis label with enough digits to tell small values apart (0.001 MiB/s is not 0). */
function tick(v) {
  if (v === null || v === undefined) return '';
  const a = Math.abs(v);
  return a === 0 ? '0' : a >= 100 ? v.toFixed(0) : a >= 1 ? String(Number(v.toFixed(1))) : String(Number(v.toPrecision(2)));
}
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

function makeChart(key, container, names, opts = {}) {
  if (charts[key]) return charts[key];
  if (typeof uPlot === 'undefined') return null;
  const ring = new Ring(names);
  const width = Math.max(240, container.clientWidth || 300);
  const plot = new uPlot({
    width, height: 180,
    legend: { show: names.length <= 8, live: false },
    cursor: { drag: { x: false, y: false } },
    // Always the last RING × 2 s (5 minutes), ending at the newest sample: a fixed window from the
    // first sample on, rather than an axis stretched over years around a single point.
    scales: {
      x: { time: true, range: (u, min, max) => [max - RING * SYSTEM_EVERY / 1000, max] },
      y: opts.range ? { range: opts.range } : { auto: true },
    },
    axes: [{}, { size: 50, values: (u, splits) => splits.map(tick) }],
    series: [{}, ...names.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true }))],
  }, ring.data, container);
  charts[key] = { plot, ring, container };
  return charts[key];
}

function ensureCharts() {
  // Charts whose series are known up front; CPU (cores) and GPU (devices) wait for the first sample.
  makeChart('mem', $('chart-mem'), ['used', 'cached', 'swap used'], { range: [0, null] });
  makeChart('psi', $('chart-psi'), ['cpu', 'memory', 'io'], { range: [0, 100] });
  makeChart('disk', $('chart-disk'), ['read', 'write'], { range: [0, null] });
  makeChart('net', $('chart-net'), ['received', 'sent'], { range: [0, null] });
}

function resizeCharts() {
  for (const { plot, container } of Object.values(charts)) {
    const width = Math.max(240, container.clientWidth);
    if (Math.abs(width - plot.width) > 4) plot.setSize({ width, height: 180 });
  }
}

const GIB = 1024 ** 3, MIB = 1024 ** 2;
function sum(list, f) {
  let total = null;
  for (const item of list || []) { const v = f(item); if (v !== null && v !== undefined) total = (total || 0) + v; }
  return total;
}

function addSample(s) {
  const t = Date.parse(s.at) / 1000;
  if (!Number.isFinite(t)) return;
  ensureCharts();
  const cores = s.cpu && s.cpu.per_core;
  if (cores && !charts.cpu) makeChart('cpu', $('chart-cpu'), cores.map((_, i) => `cpu${i}`), { range: [0, 100] });
  if (charts.cpu) charts.cpu.ring.push(t, (cores || []).map((v) => v * 100));
  const m = s.memory;
  if (m && charts.mem) charts.mem.ring.push(t, [m.used / GIB, m.cached / GIB, (m.swap_total - m.swap_free) / GIB]);
  const p = s.pressure;
  if (charts.psi) charts.psi.ring.push(t, p ? [p.cpu.some.avg10 * 100, p.memory.some.avg10 * 100, p.io.some.avg10 * 100] : [null, null, null]);
  if (charts.disk) charts.disk.ring.push(t, [sum(s.disks, (d) => d.read_bytes_per_second) / MIB, sum(s.disks, (d) => d.write_bytes_per_second) / MIB]);
  const nets = (s.networks || []).filter((n) => !n.loopback);
  const net = nets.length ? nets : (s.networks || []);
  if (charts.net) charts.net.ring.push(t, [sum(net, (n) => n.rx_bytes_per_second) / 1024, sum(net, (n) => n.tx_bytes_per_second) / 1024]);
  if (s.gpus && s.gpus.length) {
    if (!charts.gpu) {
      $('gpu-figure').hidden = false;
      makeChart('gpu', $('chart-gpu'), s.gpus.map((g) => `gpu${g.index}`), { range: [0, 100] });
    }
    if (charts.gpu) charts.gpu.ring.push(t, s.gpus.map((g) => (g.utilization_gpu ?? 0) * 100));
  }
}

function redraw() {
  for (const { plot, ring } of Object.values(charts)) plot.setData(ring.data);
}

let systemBusy = false;
async function pollSystem(history) {
  if (systemBusy) return;
  systemBusy = true;
  try {
    const answer = await quietly(() => api('GET', history ? '/api/metrics/system?history=true' : '/api/metrics/system'));
    if (!answer || !me) return;
    for (const sample of Array.isArray(answer) ? answer : [answer]) addSample(sample);
    redraw();
  } finally {
    systemBusy = false;
  }
}

/** For tests and the curious: how much the page holds now. */
window.auraDashboard = {
  rows: () => jobs.size,
  nodes: () => nodeRows.size,
  chartPoints: () => Object.fromEntries(Object.entries(charts).map(([k, c]) => [k, c.plot.data[0].length])),
  timers: () => timers.size,
};

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
