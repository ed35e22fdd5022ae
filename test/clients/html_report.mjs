#!/usr/bin/env node
// Opens `surge load --html` reports in a real browser: headless Chromium
// (Debian's /usr/bin/chromium) driven by playwright-core. For each page it
// checks that the page loads nothing besides itself and logs no error, that
// every required plot is an <svg> with an accessible <title> and a non-zero
// rendered size, and saves a full-page screenshot.
//
// Usage: node html_report.mjs --require id1,id2,... URL PNG [URL PNG]...
//
// The pages must be served over http from a loopback address (Chromium here
// does not open file:// URLs reliably). Prints one JSON line and exits 0 when
// every check passed; on failure prints a message on stderr and exits 1.
// Every wait is bounded; a watchdog ends the process regardless. The browser
// is always closed and its temporary profile removed. Never downloads a
// browser: it uses /usr/bin/chromium (or $CHROMIUM_PATH).

import { mkdtempSync, rmSync, existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const STEP_TIMEOUT_MS = 10_000;
const LAUNCH_TIMEOUT_MS = 15_000;
const CLOSE_TIMEOUT_MS = 5_000;
const WATCHDOG_MS = 45_000;
const CLEANUP_BUDGET_MS = 10_000;
const VIEWPORT = { width: 1280, height: 900 };

let launching = null;
let userDataDir = null;
let cleaning = null;

function bounded(promise, ms) {
  let timer;
  return Promise.race([
    Promise.resolve(promise).catch(() => {}),
    new Promise((resolve) => { timer = setTimeout(resolve, ms); }),
  ]).finally(() => clearTimeout(timer));
}

function cleanup() {
  if (!cleaning) {
    cleaning = (async () => {
      if (launching) {
        const l = launching;
        launching = null;
        await bounded(l.then((ctx) => ctx.close()), LAUNCH_TIMEOUT_MS + CLOSE_TIMEOUT_MS);
      }
      if (userDataDir) {
        try {
          rmSync(userDataDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
        } catch (err) {
          process.stderr.write(`html_report: warning: could not remove ${userDataDir}: ${err.message}\n`);
        }
        userDataDir = null;
      }
    })();
  }
  return cleaning;
}

let failed = false;
async function fail(msg) {
  if (failed) return;
  failed = true;
  process.stderr.write(`html_report: FAIL: ${msg}\n`);
  await bounded(cleanup(), CLEANUP_BUDGET_MS);
  process.exit(1);
}

const watchdog = setTimeout(() => fail(`watchdog: did not finish within ${WATCHDOG_MS} ms`), WATCHDOG_MS);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => fail(`received ${sig}`));
}

const { chromium } = await import('playwright-core');
const PW_VERSION = require('playwright-core/package.json').version;

const args = process.argv.slice(2);
let required = [];
if (args[0] === '--require') {
  required = (args[1] || '').split(',').filter(Boolean);
  args.splice(0, 2);
}
if (args.length === 0 || args.length % 2 !== 0) {
  await fail(`usage: node html_report.mjs --require id1,id2 URL PNG [URL PNG]... (got ${JSON.stringify(process.argv.slice(2))})`);
}
const pages = [];
for (let i = 0; i < args.length; i += 2) {
  if (!/^http:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?\//.test(args[i])) {
    await fail(`${args[i]}: only http pages on a loopback address are opened`);
  }
  pages.push({ url: args[i], png: args[i + 1] });
}

// Runs in the page: every plot's id, rendered size, title and no-data note.
function inspectPlots() {
  return [...document.querySelectorAll('svg')].map((svg) => {
    const r = svg.getBoundingClientRect();
    const title = [...svg.children].find((c) => c.tagName.toLowerCase() === 'title');
    const nodata = svg.querySelector('text.nodata');
    return {
      id: svg.id,
      width: Math.round(r.width),
      height: Math.round(r.height),
      title: title ? title.textContent : null,
      nodata: nodata ? nodata.textContent : null,
      marks: svg.querySelectorAll('rect.bar, polyline, circle').length,
    };
  });
}

async function checkPage(context, { url, png }) {
  const page = await context.newPage();
  const requests = [];
  const problems = [];
  page.on('request', (req) => {
    if (req.url() !== url && !req.url().startsWith('data:')) requests.push(req.url());
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  const nav = await page.goto(url, { timeout: STEP_TIMEOUT_MS, waitUntil: 'load' });
  if (!nav || nav.status() !== 200) throw new Error(`page.goto(${url}): HTTP ${nav && nav.status()}`);
  const title = await page.title();
  const plots = await page.evaluate(inspectPlots);
  const byId = Object.fromEntries(plots.map((p) => [p.id, p]));
  for (const id of required) {
    const p = byId[id];
    if (!p) throw new Error(`${url}: no svg#${id}; plots: ${JSON.stringify(plots)}`);
    if (!(p.width > 0 && p.height > 0)) throw new Error(`${url}: svg#${id} renders at ${p.width}×${p.height}`);
    if (!p.title) throw new Error(`${url}: svg#${id} has no <title>`);
  }
  await page.screenshot({ path: png, fullPage: true, timeout: STEP_TIMEOUT_MS });
  const pngBytes = statSync(png).size;
  if (pngBytes === 0) throw new Error(`${png}: empty screenshot`);
  if (requests.length) problems.push(`the page requested ${requests.join(', ')}`);
  if (problems.length) throw new Error(`${url}: ${problems.join('; ')}`);
  await page.close();
  return { url, title, plots, screenshot: png, screenshot_bytes: pngBytes };
}

async function run() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found (apt-get install -y --no-install-recommends chromium)`);
  userDataDir = mkdtempSync(join(tmpdir(), 'surge-chromium-'));
  launching = chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: LAUNCH_TIMEOUT_MS,
    viewport: VIEWPORT,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
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
  const context = await launching;
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const browser = context.browser()?.version() ?? '';
  const results = [];
  for (const p of pages) results.push(await checkPage(context, p));
  return { browser, results };
}

try {
  const t0 = Date.now();
  const { browser, results } = await run();
  await cleanup();
  clearTimeout(watchdog);
  process.stdout.write(
    JSON.stringify({
      client: 'chromium-playwright',
      version: `chromium ${browser} / playwright-core ${PW_VERSION}`,
      node: process.version,
      ok: true,
      total_ms: Date.now() - t0,
      pages: results,
    }) + '\n',
  );
  process.exit(0);
} catch (err) {
  await fail(err && err.message ? err.message : String(err));
}
