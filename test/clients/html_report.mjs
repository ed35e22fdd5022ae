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
// browser: it uses /usr/bin/chromium (or $CHROMIUM_PATH). Launching, the
// watchdog and cleanup are in browser.mjs.

import { statSync } from 'node:fs';
import { browserRun, playwrightVersion } from './browser.mjs';

const STEP_TIMEOUT_MS = 10_000;
const VIEWPORT = { width: 1280, height: 900 };

const { launch, fail, finish } = browserRun('html_report', {
  launchTimeoutMs: 15_000,
  closeTimeoutMs: 5_000,
  watchdogMs: 45_000,
  cleanupBudgetMs: 10_000,
});

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
  const context = await launch({ viewport: VIEWPORT });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const browser = context.browser()?.version() ?? '';
  const results = [];
  for (const p of pages) results.push(await checkPage(context, p));
  return { browser, results };
}

await finish(run, ({ browser, results }, totalMs) => ({
  client: 'chromium-playwright',
  version: `chromium ${browser} / playwright-core ${playwrightVersion()}`,
  node: process.version,
  ok: true,
  total_ms: totalMs,
  pages: results,
}));
