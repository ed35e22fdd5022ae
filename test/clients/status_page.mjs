#!/usr/bin/env node
// Outside-client scenario for Surge's status page (GET /, engine/ui/index.html)
// in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
// playwright-core.
//
// Usage: node status_page.mjs ws://127.0.0.1:PORT
//
// Environment: SURGE_SCREENSHOT_DIR, where the screenshots go (default: a new
// temporary directory, kept); CHROMIUM_PATH (default /usr/bin/chromium).
//
// The Go test (engine/outside_test.go, status_page_test.go) drives the server
// side. The script asks it for each step by printing one line
// {"want":"setup"|"publish"|"load"|"stop",…} on stdout and reading one JSON
// line back on stdin. The last stdout line is the result (JSON); on failure a
// message goes to stderr and the exit status is 1. Every wait is bounded; a
// watchdog ends the process regardless. The browser is always closed and its
// temporary profile removed. Never downloads a browser. Launching, the
// watchdog and cleanup are in browser.mjs.
//
// Scenario:
//   a. launch Chromium (persistent context on a fresh profile dir), open
//      http://127.0.0.1:PORT/ (not about:blank): HTML 200, title, status "ready"
//   b. setup: the Go test opens 25 subscribers (20 on status.alpha, 5 on
//      status.beta), closes others cleanly, by dropping TCP and by a protocol
//      error, publishes 3 + 1 messages; the page's connections figure and chart
//      show 25 (the chart's newest point is its maximum, drawn at the top), top
//      topics list status.alpha (20, seq 3) first, then status.beta (5, seq 1),
//      and closes by reason show client_close 3, peer_gone 1, protocol_error 1
//   c. "try it": subscribe to status.try from the panel (a WebSocket from the
//      page), then a message published by the Go test, one published by this
//      script with fetch and one published with the panel's own button all
//      appear in the panel's log, in order, with seq 1, 2, 3
//   d. nothing is wider than the window; screenshot status.png
//   e. load: the Go test opens 300 more subscribers and publishes continuously;
//      the page shows >= 300 connections, non-zero published and delivered
//      rates, both rate charts rise from zero to the load, load topics
//      lead top topics; screenshot status-load.png; the Go test stops the load
//      and closes the 300 sockets, and the page's connections figure falls back;
//      in a 400 px window the page fits too (status-narrow.png)
//   f. the panel's Close button closes the socket with 1000
//   g. no page errors and no console errors during the whole run

import { mkdtempSync, mkdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { isDeepStrictEqual } from 'node:util';
import { browserRun, playwrightVersion } from './browser.mjs';

const NAME = 'status_page';
const STEP_TIMEOUT_MS = 15_000; // every single wait in the page
const ASK_TIMEOUT_MS = 30_000; // one request to the Go test
const WATCHDOG_MS = 100_000; // whole scenario (engine/outside_test.go allows 140 s)
const VIEWPORT = { width: 1280, height: 860 };
const NARROW = { width: 400, height: 860 };
const TRY_TOPIC = 'status.try';

const { launch, fail, finish } = browserRun(NAME, {
  launchTimeoutMs: 15_000,
  closeTimeoutMs: 5_000,
  watchdogMs: WATCHDOG_MS,
  watchdogMessage: `watchdog: scenario did not finish within ${WATCHDOG_MS} ms`,
  cleanupBudgetMs: 10_000,
});

const base = process.argv[2];
if (!base || !/^wss?:\/\/[^/]+$/.test(base.replace(/\/$/, ''))) {
  await fail(`usage: node ${NAME}.mjs ws://HOST:PORT (got ${JSON.stringify(base)})`);
}
const httpBase = base.replace(/\/$/, '').replace(/^ws/, 'http');

// --- requests to the Go test (one JSON line out, one JSON line back) ---
const replies = [];
let replyWaiter = null;
const stdinLines = createInterface({ input: process.stdin });
stdinLines.on('line', (line) => {
  if (replyWaiter) {
    const w = replyWaiter;
    replyWaiter = null;
    w(line);
  } else {
    replies.push(line);
  }
});
let stdinClosed = false;
stdinLines.on('close', () => {
  stdinClosed = true;
  if (replyWaiter) replyWaiter(null);
});

async function ask(want, extra = {}) {
  process.stdout.write(JSON.stringify({ want, ...extra }) + '\n');
  let timer;
  const line = await Promise.race([
    replies.length ? Promise.resolve(replies.shift()) : stdinClosed ? Promise.resolve(null) : new Promise((res) => { replyWaiter = res; }),
    new Promise((res) => { timer = setTimeout(() => res(undefined), ASK_TIMEOUT_MS); }),
  ]).finally(() => clearTimeout(timer));
  if (line === undefined) throw new Error(`no reply from the Go test to ${want} within ${ASK_TIMEOUT_MS} ms`);
  if (line === null) throw new Error(`stdin closed while waiting for the reply to ${want} (run this script from engine/outside_test.go)`);
  let reply;
  try {
    reply = JSON.parse(line);
  } catch {
    throw new Error(`reply to ${want} is not JSON: ${JSON.stringify(line)}`);
  }
  if (reply.error) throw new Error(`Go test could not ${want}: ${reply.error}`);
  return reply;
}

// --- HTTP from Node ---
async function publish(topic, data) {
  const url = `${httpBase}/v1/publish`;
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ topic, data }),
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`POST ${url}: HTTP ${res.status}, not JSON: ${JSON.stringify(text)}`);
  }
  if (res.status !== 200 || body.result !== 'ok' || body.topic !== topic || !Number.isInteger(body.seq)) {
    throw new Error(`POST ${url}: HTTP ${res.status} ${text}`);
  }
  return body.seq;
}

// --- reading the page ---

// parseFigure undoes the page's fmt(): "25", "1.2k", "3.4M".
function parseFigure(s) {
  const m = /^(-?[0-9.]+)([kMG]?)$/.exec((s || '').trim());
  if (!m) return NaN;
  return Number(m[1]) * { '': 1, k: 1e3, M: 1e6, G: 1e9 }[m[2]];
}

const byTestId = (id) => `[data-testid="${id}"]`;

async function figure(page, id) {
  return parseFigure(await page.locator(byTestId(id)).textContent());
}

// snapshot returns what the page shows, for checks and failure messages.
async function snapshot(page) {
  return page.evaluate(() => {
    const q = (s) => document.querySelector(s);
    const t = (s) => (q(s) ? q(s).textContent.trim() : null);
    const chart = (id) => {
      const c = q(`[data-testid="${id}"]`);
      return { samples: Number(c.dataset.samples || 0), last: c.dataset.last || '', max: Number(c.dataset.max || 0) };
    };
    return {
      status: t('[data-testid="status"]'),
      kpi: Object.fromEntries(['connections', 'subscriptions', 'topics', 'published-rate', 'delivered-rate', 'drops']
        .map((k) => [k, t(`[data-testid="kpi-${k}"]`)])),
      connections: chart('chart-connections'),
      published: chart('chart-published'),
      delivered: chart('chart-delivered'),
      topics: [...document.querySelectorAll('[data-testid="topic-row"]')].map((tr) => [...tr.children].map((td) => td.textContent)),
      closes: Object.fromEntries([...document.querySelectorAll('[data-testid="close-row"]')].map((tr) => [tr.children[0].textContent, tr.children[1].textContent])),
      tryState: t('[data-testid="try-state"]'),
      log: [...document.querySelectorAll('[data-testid="try-log"] > div')].map((d) => d.textContent),
    };
  });
}

// until polls the page's snapshot until check(snap) returns true (bounded).
async function until(page, what, check, ms = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + ms;
  let snap, why;
  for (;;) {
    snap = await snapshot(page);
    try {
      const r = check(snap);
      if (r === true) return snap;
      why = r || 'not yet';
    } catch (err) {
      why = err.message;
    }
    if (Date.now() > deadline) {
      throw new Error(`timeout after ${ms} ms waiting for ${what} (${why}); the page shows ${JSON.stringify(snap)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

// inkRows reports, for a chart canvas, the topmost and bottommost canvas rows
// (as a fraction of its height, 0 = top) that hold pixels of the given colour.
async function ink(page, testid, rgb) {
  return page.evaluate(([sel, [r, g, b]]) => {
    const c = document.querySelector(sel);
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let top = -1, bottom = -1, n = 0;
    for (let y = 0; y < c.height; y++) {
      for (let x = 0; x < c.width; x++) {
        const i = (y * c.width + x) * 4;
        if (Math.abs(d[i] - r) < 24 && Math.abs(d[i + 1] - g) < 24 && Math.abs(d[i + 2] - b) < 24 && d[i + 3] > 200) {
          n++;
          if (top < 0) top = y;
          bottom = y;
        }
      }
    }
    return { n, top: top / c.height, bottom: bottom / c.height, width: c.width, height: c.height };
  }, [byTestId(testid), rgb]);
}
const BLUE = [0x4c, 0xc2, 0xff];
const GREEN = [0x7e, 0xe7, 0x87];

function deliveries(log) {
  const out = [];
  for (const line of log) {
    try {
      const m = JSON.parse(line);
      if (m.op === 'message') out.push(m);
    } catch {
      // publish replies ("← {…}") and other lines
    }
  }
  return out;
}

function screenshotDir() {
  let dir = process.env.SURGE_SCREENSHOT_DIR;
  if (dir) {
    mkdirSync(dir, { recursive: true });
  } else {
    dir = mkdtempSync(join(tmpdir(), 'surge-status-page-'));
  }
  return resolve(dir);
}

async function shoot(page, dir, name) {
  const path = join(dir, name);
  await page.screenshot({ path, fullPage: true, timeout: STEP_TIMEOUT_MS });
  const size = statSync(path).size;
  if (size < 10_000) throw new Error(`screenshot ${path} is only ${size} bytes`);
  return path;
}

async function scenario() {
  const t0 = Date.now();
  // (a) launch and open the status page
  const context = await launch({ viewport: VIEWPORT, args: ['--headless'] });
  const shots = screenshotDir();
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const browserVersion = context.browser()?.version() ?? '';
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console error: ${msg.text()} (${msg.location().url || 'page'})`);
  });
  page.on('requestfailed', (req) => problems.push(`request failed: ${req.method()} ${req.url()}: ${req.failure()?.errorText}`));

  const pageURL = `${httpBase}/`;
  const nav = await page.goto(pageURL, { timeout: STEP_TIMEOUT_MS });
  if (!nav || nav.status() !== 200) throw new Error(`page.goto(${pageURL}): HTTP ${nav && nav.status()}`);
  const ctype = nav.headers()['content-type'] || '';
  if (!ctype.startsWith('text/html')) throw new Error(`GET / Content-Type ${JSON.stringify(ctype)}, want text/html`);
  const title = await page.title();
  if (title !== 'Surge status') throw new Error(`title ${JSON.stringify(title)}, want "Surge status"`);
  const launchMs = Date.now() - t0;
  // An idle engine: ready, zero connections, and the charts have drawn samples.
  await until(page, 'the page to show an idle, ready engine', (s) =>
    s.status === 'ready' && s.kpi.connections === '0' && s.connections.samples >= 2 && s.published.samples >= 1 && s.delivered.samples >= 1 || `status ${s.status}`);

  // (b) setup from the Go test; the page follows
  const setup = await ask('setup');
  const want = setup.connections;
  const snapB = await until(page, `the connections figure and chart to show ${want}`, (s) =>
    (figureEq(s.kpi.connections, want) && s.connections.last === String(want) && s.connections.max === want) ||
    `connections kpi ${s.kpi.connections}, chart last ${s.connections.last} max ${s.connections.max}`);
  const connInk = await ink(page, 'chart-connections', BLUE);
  // Newest point is the maximum: drawn near the top; earlier zeros near the bottom.
  if (!(connInk.n > 50 && connInk.top < 0.25 && connInk.bottom > 0.85)) {
    throw new Error(`connections chart does not rise from 0 to ${want}: line pixels ${JSON.stringify(connInk)}`);
  }
  const snapTopics = await until(page, 'top topics to list the setup topics', (s) => {
    const rows = s.topics;
    for (let i = 0; i < setup.topics.length; i++) {
      const w = setup.topics[i];
      const r = rows[i];
      if (!r) return `row ${i} missing, want ${w.topic}`;
      if (r[0] !== w.topic || parseFigure(r[1]) !== w.subscribers || Number(r[3]) !== w.seq) {
        return `row ${i} is ${JSON.stringify(r)}, want ${w.topic} subscribers ${w.subscribers} seq ${w.seq}`;
      }
    }
    return true;
  });
  await until(page, 'closes by reason to show the setup closes', (s) => {
    for (const [reason, n] of Object.entries(setup.closes)) {
      if (parseFigure(s.closes[reason]) !== n) return `${reason}: ${s.closes[reason]}, want ${n}`;
    }
    return true;
  });
  if (!figureEq(snapB.kpi.subscriptions, setup.subscriptions)) {
    throw new Error(`subscriptions figure ${snapB.kpi.subscriptions}, want ${setup.subscriptions}`);
  }

  // (c) the try-it panel
  await page.locator(byTestId('try-topic')).fill(TRY_TOPIC);
  await page.locator(byTestId('try-subscribe')).click();
  const snapC = await until(page, 'the try-it panel to subscribe', (s) =>
    (s.tryState || '').startsWith(`subscribed to ${TRY_TOPIC}`) || `state ${JSON.stringify(s.tryState)}`);
  const tryExtensions = await page.locator(byTestId('try-state')).getAttribute('title');
  if (!/^subscribed to \S+ \(permessage-deflate\)$/.test(snapC.tryState) || !/permessage-deflate/.test(tryExtensions || '')) {
    throw new Error(`try-it state ${JSON.stringify(snapC.tryState)} (title ${JSON.stringify(tryExtensions)}), want the negotiated permessage-deflate`);
  }
  await until(page, 'the try-it socket to count as a connection', (s) => figureEq(s.kpi.connections, want + 1) || `connections ${s.kpi.connections}`);

  const fromGo = { from: 'go', n: 1 };
  const goPub = await ask('publish', { topic: TRY_TOPIC, data: fromGo });
  const fromScript = { from: 'script', text: 'héllo ✓', n: 2 };
  const scriptSeq = await publish(TRY_TOPIC, fromScript);
  const fromButton = { from: 'button', n: 3 };
  await page.locator(byTestId('try-payload')).fill(JSON.stringify(fromButton));
  await page.locator(byTestId('try-publish')).click();
  const wantMsgs = [
    { op: 'message', topic: TRY_TOPIC, seq: goPub.seq, data: fromGo },
    { op: 'message', topic: TRY_TOPIC, seq: scriptSeq, data: fromScript },
    { op: 'message', topic: TRY_TOPIC, seq: scriptSeq + 1, data: fromButton },
  ];
  const snapLog = await until(page, 'three deliveries in the try-it log', (s) => {
    const got = deliveries(s.log);
    if (got.length < 3) return `${got.length} deliveries`;
    if (!isDeepStrictEqual(got, wantMsgs)) return `log deliveries ${JSON.stringify(got)}, want ${JSON.stringify(wantMsgs)}`;
    const reply = s.log.find((l) => l.startsWith('← '));
    if (!reply) return 'no publish reply line';
    const r = JSON.parse(reply.slice(2));
    if (r.result !== 'ok' || r.seq !== scriptSeq + 1) return `publish reply ${reply}`;
    return true;
  });
  if (goPub.seq !== 1 || scriptSeq !== 2) throw new Error(`seqs ${goPub.seq}, ${scriptSeq}; want 1, 2 (fresh topic)`);
  // The panel's topic shows up in top topics with its seq.
  await until(page, `${TRY_TOPIC} in top topics`, (s) =>
    s.topics.some((r) => r[0] === TRY_TOPIC && r[1] === '1' && r[3] === '3') || JSON.stringify(s.topics));

  // (d)
  await noOverflow(page, 'at 1280 px');
  const shot1 = await shoot(page, shots, 'status.png');

  // (e) under load
  const load = await ask('load');
  const snapE = await until(page, 'the page to show the load', (s) => {
    const c = parseFigure(s.kpi.connections);
    const pub = parseFigure(s.kpi['published-rate']);
    const del = parseFigure(s.kpi['delivered-rate']);
    if (!(c >= load.connections)) return `connections ${s.kpi.connections}, want >= ${load.connections}`;
    if (!(pub >= load.rate / 4)) return `published/s ${s.kpi['published-rate']}, want >= ${load.rate / 4}`;
    if (!(del >= (load.rate / 4) * load.per_topic)) return `delivered/s ${s.kpi['delivered-rate']}`;
    if (!(Number(s.published.last) > 0 && Number(s.delivered.last) > 0)) {
      return `rate charts' newest points: published ${s.published.last}, delivered ${s.delivered.last}`;
    }
    if (!(s.topics[0] && s.topics[0][0].startsWith('load.') && parseFigure(s.topics[0][1]) === load.per_topic)) {
      return `first top topic ${JSON.stringify(s.topics[0])}, want a load topic with ${load.per_topic} subscribers`;
    }
    return true;
  }, 25_000);
  // Let a few more samples accumulate so the screenshot shows the plateau.
  await page.waitForTimeout(2500);
  // Each rate chart rises from its zero line (bottom) to the load's plateau (top).
  for (const [id, colour] of [['chart-published', GREEN], ['chart-delivered', BLUE]]) {
    const k = await ink(page, id, colour);
    if (!(k.n > 20 && k.top < 0.4 && k.bottom > 0.85)) throw new Error(`${id}: the line does not rise from zero to the load: ${JSON.stringify(k)}`);
  }
  const connLoad = await ink(page, 'chart-connections', BLUE);
  if (!(connLoad.top < 0.25)) throw new Error(`connections chart: load not drawn near the top: ${JSON.stringify(connLoad)}`);
  const snapLoad = await snapshot(page);
  await noOverflow(page, 'under load');
  const shot2 = await shoot(page, shots, 'status-load.png');
  // A phone-sized window: one column, nothing wider than the screen.
  await page.setViewportSize(NARROW);
  await page.waitForTimeout(1200); // a poll redraws the charts at the new size
  await noOverflow(page, `at ${NARROW.width} px`);
  const shot3 = await shoot(page, shots, 'status-narrow.png');
  await page.setViewportSize(VIEWPORT);
  const stopped = await ask('stop');
  await until(page, 'the connections figure to fall after the load', (s) =>
    figureEq(s.kpi.connections, stopped.connections) || `connections ${s.kpi.connections}, want ${stopped.connections}`);

  // (f) close from the panel
  await page.locator(byTestId('try-close')).click();
  const snapF = await until(page, 'the try-it socket to close', (s) =>
    /^closed 1000\b/.test(s.tryState || '') || `state ${JSON.stringify(s.tryState)}`);

  // (g)
  if (problems.length) throw new Error(`the page reported problems:\n  ${problems.join('\n  ')}`);

  return {
    run: {
      mode: 'status-page',
      offered_deflate: false,
      seq: scriptSeq + 1,
      close_code: 1000,
      try_state: snapF.tryState,
      try_extensions: tryExtensions,
      deliveries: deliveries(snapLog.log).length,
      setup_connections: want,
      top_topics: snapTopics.topics.slice(0, 3),
      load_kpis: snapLoad.kpi,
      load_charts_last: { published: snapLoad.published.last, delivered: snapLoad.delivered.last },
      load_published: stopped.published,
      launch_ms: launchMs,
      browser: browserVersion,
    },
    screenshots: [shot1, shot2, shot3],
  };
}

// noOverflow fails when anything makes the page wider than the window.
async function noOverflow(page, when) {
  const o = await page.evaluate(() => {
    const vw = document.documentElement.clientWidth;
    const wide = [...document.querySelectorAll('body *')]
      .filter((el) => el.getBoundingClientRect().right > vw + 0.5)
      .slice(0, 5)
      .map((el) => `${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}${el.dataset.testid ? `[data-testid=${el.dataset.testid}]` : ''} right=${Math.round(el.getBoundingClientRect().right)}`);
    return { vw, sw: document.documentElement.scrollWidth, wide };
  });
  if (o.sw > o.vw || o.wide.length) {
    throw new Error(`layout ${when}: page is ${o.sw} px wide in a ${o.vw} px window; too wide: ${o.wide.join(', ')}`);
  }
}

function figureEq(text, n) {
  return parseFigure(text) === n;
}

await finish(scenario, ({ run, screenshots }, totalMs) => ({
  client: 'chromium-playwright-status-page',
  version: `chromium ${run.browser} / playwright-core ${playwrightVersion()}`,
  node: process.version,
  ok: true,
  seq: run.seq,
  total_ms: totalMs,
  screenshots,
  runs: [run],
}));
