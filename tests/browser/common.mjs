// What the dashboard's browser scripts share: Debian's Chromium through playwright-core (no browser
// download), the daemon's address and tokens from the environment (crates/aura/tests/dashboard.rs sets
// them), API calls with a bearer token, and a collector of console errors and CSP violations.

import { chromium } from 'playwright-core';

export const URL_BASE = need('AURA_URL');
export const TOKEN = need('AURA_TOKEN');

export function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (crates/aura/tests/dashboard.rs sets it)`);
  return value;
}

export async function launch() {
  return chromium.launch({
    executablePath: process.env.AURA_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** Calls the API as a script would, with the admin token. */
export async function api(method, path, body, token = TOKEN) {
  const init = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`${URL_BASE}${path}`, init);
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  const type = response.headers.get('content-type') || '';
  return type.includes('json') ? JSON.parse(text) : text;
}

/**
 * Every console error, uncaught exception and CSP violation of a page: none is expected (the page's
 * sign-in probe, `GET /api/session`, answers 204 before sign-in, not an error).
 */
export function watch(page, errors) {
  page.on('console', (message) => {
    if (message.type() !== 'error' && message.type() !== 'warning') return;
    const text = message.text();
    if (message.type() === 'warning' && !/Content Security Policy|Refused/.test(text)) return;
    errors.push(`console ${message.type()}: ${text} (${JSON.stringify(message.location())})`);
  });
  page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
}

export async function signIn(page, token) {
  await page.goto(URL_BASE);
  await page.locator('#token').waitFor({ state: 'visible', timeout: 30000 });
  await page.fill('#token', token);
  await page.click('#sign-in-form button[type=submit]');
  await page.locator('#main').waitFor({ state: 'visible', timeout: 30000 });
}

export function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

/** Polls `check` (async, truthy when done) every 200 ms until `timeout` ms; throws `what` on timeout. */
export async function until(what, check, timeout = 60000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** `aura_event_streams` of the daemon's /metrics: event streams open now. */
export async function openStreams() {
  const text = await api('GET', '/metrics');
  const line = text.split('\n').find((l) => /^aura_event_streams(\{\})? /.test(l));
  if (!line) throw new Error('no aura_event_streams in /metrics');
  return Number(line.split(' ').pop());
}
