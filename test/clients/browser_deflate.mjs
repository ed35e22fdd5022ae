#!/usr/bin/env node
// Outside-client scenario for Surge using a real browser: headless Chromium
// (Debian's /usr/bin/chromium) driven by playwright-core. Proves that a browser
// negotiates permessage-deflate with Surge and receives both a compressed and
// an uncompressed push intact.
//
// Usage: node browser_deflate.mjs ws://127.0.0.1:PORT
//
// Prints one JSON line and exits 0 on success; on failure prints a message on
// stderr and exits 1. Every wait is bounded; a watchdog ends the process
// regardless. The browser is always closed and its temporary profile removed.
// Never downloads a browser: it uses /usr/bin/chromium (or $CHROMIUM_PATH).
// Launching, the watchdog and cleanup are in browser.mjs.
//
// Scenario:
//   a. launch Chromium (persistent context on a fresh temp dir), open a page served
//      by the server itself (BASE/healthz over http; see below why not about:blank)
//   b. in the page: new WebSocket(BASE/ws?topic=T), wait for open,
//      ws.extensions must contain permessage-deflate
//   c. GET /v1/stats (baseline), then POST /v1/publish a ~4 KiB message (above the
//      server's 512-byte deflate threshold) and a small one (below it)
//   d. the page receives both as text frames, in order: {"op":"message","topic":T,
//      "seq":1|2,"data":<published data>}
//   e. GET /v1/stats: deflated_sent rose by exactly 1 (the large message only)
//   f. close 1000 "bye" from the page -> close event code 1000, wasClean

import { isDeepStrictEqual } from 'node:util';
import { browserRun, playwrightVersion } from './browser.mjs';

const STEP_TIMEOUT_MS = 10_000; // every single wait
const WATCHDOG_MS = 25_000; // whole scenario
const TOPIC = 'outside.browser';
const LARGE_MIN_BYTES = 4096;
const DEFLATE_THRESHOLD = 512; // Surge's default engine.Config.DeflateThreshold

const { launch, fail, finish } = browserRun('browser_deflate', {
  launchTimeoutMs: 15_000,
  closeTimeoutMs: 5_000,
  watchdogMs: WATCHDOG_MS,
  watchdogMessage: `watchdog: scenario did not finish within ${WATCHDOG_MS} ms`,
  cleanupBudgetMs: 10_000, // engine/outside_test.go allows 60 s in all
});

const base = process.argv[2];
if (!base || !/^wss?:\/\/[^/]+$/.test(base.replace(/\/$/, ''))) {
  await fail(`usage: node browser_deflate.mjs ws://HOST:PORT (got ${JSON.stringify(base)})`);
}
const wsBase = base.replace(/\/$/, '');
const httpBase = wsBase.replace(/^ws/, 'http');

async function httpJSON(method, path, body) {
  const url = `${httpBase}${path}`;
  const res = await fetch(url, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${method} ${url}: HTTP ${res.status}, body ${JSON.stringify(text)}`);
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${method} ${url}: response is not JSON: ${JSON.stringify(text)}`);
  }
}

async function publish(topic, data) {
  const body = await httpJSON('POST', '/v1/publish', { topic, data });
  if (body.result !== 'ok' || body.topic !== topic || !Number.isInteger(body.seq) || body.seq < 1) {
    throw new Error(`POST /v1/publish: want {"result":"ok","topic":${JSON.stringify(topic)},"seq":>=1}, got ${JSON.stringify(body)}`);
  }
  return body.seq;
}

async function stats() {
  const s = await httpJSON('GET', '/v1/stats');
  for (const k of ['deflated_sent', 'compressed_messages']) {
    if (!Number.isInteger(s[k])) throw new Error(`GET /v1/stats: "${k}" missing or not an integer: ${JSON.stringify(s[k])}`);
  }
  return s;
}

// largeData is a ~4 KiB, compressible, market-data-like JSON value (with non-ASCII text,
// so UTF-8 must survive inflation).
function largeData() {
  const rows = [];
  for (let i = 0; rows.length < 1000; i++) {
    rows.push({ i, sym: `SYM${i % 17}`, px: 100 + i * 0.25, qty: (i * 37) % 1000, note: 'prix café ✓' });
    if (JSON.stringify({ rows }).length >= LARGE_MIN_BYTES) break;
  }
  return { kind: 'snapshot', rows };
}

// Runs in the page: connect and record every event into window.__surge.events.
function pageConnect(url) {
  const s = { events: [], extensions: null, protocol: null };
  window.__surge = s;
  const ws = new WebSocket(url);
  s.ws = ws;
  ws.onopen = () => {
    s.extensions = ws.extensions;
    s.protocol = ws.protocol;
    s.events.push({ type: 'open' });
  };
  ws.onmessage = (ev) => {
    s.events.push({ type: 'message', text: typeof ev.data === 'string', data: typeof ev.data === 'string' ? ev.data : String(ev.data) });
  };
  ws.onerror = () => s.events.push({ type: 'error' });
  ws.onclose = (ev) => s.events.push({ type: 'close', code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
}

function describe(ev) {
  switch (ev.type) {
    case 'message':
      return `${ev.text ? 'text' : 'binary'} frame ${JSON.stringify(ev.data.length > 200 ? ev.data.slice(0, 200) + '…' : ev.data)}`;
    case 'close':
      return `close code=${ev.code} reason=${JSON.stringify(ev.reason)} wasClean=${ev.wasClean}`;
    default:
      return ev.type;
  }
}

// waitEvents waits (bounded) until the page has recorded at least n events and returns them all.
async function waitEvents(page, n, what) {
  try {
    await page.waitForFunction((k) => window.__surge.events.length >= k, n, { timeout: STEP_TIMEOUT_MS, polling: 20 });
  } catch (err) {
    const evs = await page.evaluate(() => window.__surge.events).catch(() => []);
    throw new Error(`timeout after ${STEP_TIMEOUT_MS} ms waiting for ${what}; page events so far: [${evs.map(describe).join(', ')}]`);
  }
  return page.evaluate(() => window.__surge.events);
}

function checkDelivery(ev, seq, data, what) {
  if (ev.type !== 'message') throw new Error(`waiting for ${what}: got ${describe(ev)}`);
  if (!ev.text) throw new Error(`${what}: got a binary frame, want text`);
  let msg;
  try {
    msg = JSON.parse(ev.data);
  } catch {
    throw new Error(`${what}: text frame is not JSON: ${describe(ev)}`);
  }
  if (msg.op !== 'message' || msg.topic !== TOPIC || msg.seq !== seq || !isDeepStrictEqual(msg.data, data)) {
    throw new Error(`${what} mismatch: want {"op":"message","topic":${JSON.stringify(TOPIC)},"seq":${seq},"data":<published>}, got ${describe(ev)}`);
  }
  return ev.data.length;
}

async function scenario() {
  const t0 = Date.now();

  // (a) launch
  const context = await launch();
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const browserVersion = context.browser()?.version() ?? '';
  const page = context.pages()[0] ?? (await context.newPage());
  // The page is served by Surge itself (http://127.0.0.1:PORT/healthz), not about:blank:
  // Chromium's Local Network Access checks block a WebSocket from a navigated about:blank
  // (a "public" opaque origin) to a loopback address with
  // net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS. A loopback page may reach loopback.
  const pageURL = `${httpBase}/healthz`;
  const nav = await page.goto(pageURL, { timeout: STEP_TIMEOUT_MS });
  if (!nav || nav.status() !== 200) throw new Error(`page.goto(${pageURL}): HTTP ${nav && nav.status()}`);
  const pageOrigin = await page.evaluate(() => window.origin);
  const launchMs = Date.now() - t0;

  // Watch the handshake through the DevTools protocol: what Chromium offers and what Surge answers.
  const handshake = { offered: null, answered: null, status: null, error: null };
  const cdp = await context.newCDPSession(page);
  const header = (headers, name) => {
    for (const [k, v] of Object.entries(headers || {})) if (k.toLowerCase() === name) return v;
    return null;
  };
  cdp.on('Network.webSocketWillSendHandshakeRequest', (ev) => {
    handshake.offered = header(ev.request.headers, 'sec-websocket-extensions');
  });
  cdp.on('Network.webSocketFrameError', (ev) => {
    handshake.error = ev.errorMessage;
  });
  cdp.on('Network.webSocketHandshakeResponseReceived', (ev) => {
    handshake.status = ev.response.status;
    handshake.answered = header(ev.response.headers, 'sec-websocket-extensions');
  });
  await cdp.send('Network.enable');

  // (b) connect from the page
  const url = `${wsBase}/ws?topic=${encodeURIComponent(TOPIC)}`;
  await page.evaluate(pageConnect, url);
  let evs = await waitEvents(page, 1, 'the WebSocket to open');
  if (evs[0].type !== 'open') {
    throw new Error(
      `waiting for open: got ${describe(evs[0])}${evs[1] ? ', then ' + describe(evs[1]) : ''}` +
        (handshake.error ? ` (Chromium: ${handshake.error})` : '') + ` (page origin ${pageOrigin})`,
    );
  }
  const extensions = await page.evaluate(() => window.__surge.extensions);
  if (!/(^|[\s,])permessage-deflate($|[\s;,])/.test(extensions)) {
    throw new Error(`ws.extensions is ${JSON.stringify(extensions)}, want permessage-deflate (Chromium offered ${JSON.stringify(handshake.offered)})`);
  }

  // (c) publish a large (compressed) and a small (plain) message
  const before = await stats();
  const large = largeData();
  const small = { n: 2, s: 'héllo' };
  const seq1 = await publish(TOPIC, large);
  const seq2 = await publish(TOPIC, small);
  if (seq1 !== 1 || seq2 !== 2) throw new Error(`publish seqs ${seq1}, ${seq2}; want 1, 2 (fresh topic)`);

  // (d) both delivered, in order, intact
  evs = await waitEvents(page, 3, 'both deliveries');
  const largeBytes = checkDelivery(evs[1], seq1, large, 'the large delivery');
  const smallBytes = checkDelivery(evs[2], seq2, small, 'the small delivery');
  if (largeBytes < LARGE_MIN_BYTES) throw new Error(`large delivery is only ${largeBytes} chars, want >= ${LARGE_MIN_BYTES}`);
  if (smallBytes >= DEFLATE_THRESHOLD) throw new Error(`small delivery is ${smallBytes} chars, want < ${DEFLATE_THRESHOLD}`);

  // (e) the server compressed exactly the large one for this (only) subscriber
  const after = await stats();
  const deflated = after.deflated_sent - before.deflated_sent;
  const compressed = after.compressed_messages - before.compressed_messages;
  if (after.deflated_sent < 1) throw new Error(`/v1/stats deflated_sent is ${after.deflated_sent}, want >= 1`);
  if (deflated !== 1) {
    throw new Error(`/v1/stats deflated_sent rose by ${deflated} for one large + one small delivery to one deflate subscriber, want exactly 1`);
  }

  // (f) close handshake
  await page.evaluate(() => window.__surge.ws.close(1000, 'bye'));
  evs = await waitEvents(page, 4, 'the close handshake');
  const closed = evs[3];
  if (closed.type !== 'close') throw new Error(`waiting for close: got ${describe(closed)}`);
  if (closed.code !== 1000 || !closed.wasClean) {
    throw new Error(`close code ${closed.code} reason ${JSON.stringify(closed.reason)} wasClean ${closed.wasClean}, want 1000 and clean`);
  }
  if (evs.length > 4) throw new Error(`unexpected events after close: ${evs.slice(4).map(describe).join(', ')}`);

  return {
    mode: 'deflate',
    offered_deflate: true,
    extensions,
    extensions_offered: handshake.offered,
    extensions_header: handshake.answered,
    handshake_status: handshake.status,
    seq: seq2,
    large_bytes: largeBytes,
    small_bytes: smallBytes,
    deflated_sent: after.deflated_sent,
    deflated_sent_delta: deflated,
    compressed_messages_delta: compressed,
    page_origin: pageOrigin,
    close_code: closed.code,
    close_reason: closed.reason,
    launch_ms: launchMs,
    browser: browserVersion,
  };
}

await finish(scenario, (run, totalMs) => ({
  client: 'chromium-playwright',
  version: `chromium ${run.browser} / playwright-core ${playwrightVersion()}`,
  node: process.version,
  ok: true,
  seq: run.seq,
  total_ms: totalMs,
  runs: [run],
}));
