// Shared by the scripts that drive headless Chromium (Debian's /usr/bin/chromium,
// or $CHROMIUM_PATH) through playwright-core: browser_deflate.mjs,
// html_report.mjs and status_page.mjs. Never downloads a browser.
//
// browserRun(name, limits) installs a watchdog and SIGINT/SIGTERM/SIGHUP
// handlers at once and returns:
//
//   launch({ viewport, args })  launches Chromium with a persistent context on a
//                               fresh temporary profile dir; resolves to the
//                               BrowserContext (args: extra Chromium flags,
//                               put before the shared ones)
//   fail(msg)                   prints "<name>: FAIL: <msg>" on stderr, cleans up
//                               (bounded by cleanupBudgetMs) and exits 1; only
//                               the first call counts
//   cleanup()                   closes the browser (bounded) and removes the
//                               profile dir; safe to call twice
//   done()                      cleanup() and stop the watchdog
//   finish(main, result)        runs main(); when it resolves to v: done(), prints
//                               JSON.stringify(result(v, totalMs)) as one line on
//                               stdout and exits 0 (totalMs: main plus cleanup);
//                               when anything throws: fail(its message)
//   bounded(promise, ms)        resolves when promise settles or after ms,
//                               whichever comes first; never rejects
//   playwrightVersion()         the installed playwright-core version
//
// playwright-core kills any browser it launched when the process exits, so
// process.exit never leaves Chromium behind.

import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export function bounded(promise, ms) {
  let timer;
  return Promise.race([
    Promise.resolve(promise).catch(() => {}),
    new Promise((resolve) => { timer = setTimeout(resolve, ms); }),
  ]).finally(() => clearTimeout(timer));
}

export function playwrightVersion() {
  return require('playwright-core/package.json').version;
}

export function browserRun(name, {
  launchTimeoutMs,
  closeTimeoutMs, // closing the browser during cleanup
  watchdogMs, // the whole run
  watchdogMessage = `watchdog: did not finish within ${watchdogMs} ms`,
  cleanupBudgetMs, // cleanup after a failure
}) {
  let launching = null; // promise of the BrowserContext while/after launching
  let userDataDir = null;
  let cleaning = null;
  let failed = false;

  function cleanup() {
    if (!cleaning) {
      cleaning = (async () => {
        if (launching) {
          // Also covers a launch still in progress: wait for it, then close (bounded).
          const l = launching;
          launching = null;
          await bounded(l.then((ctx) => ctx.close()), launchTimeoutMs + closeTimeoutMs);
        }
        if (userDataDir) {
          try {
            rmSync(userDataDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
          } catch (err) {
            process.stderr.write(`${name}: warning: could not remove ${userDataDir}: ${err.message}\n`);
          }
          userDataDir = null;
        }
      })();
    }
    return cleaning;
  }

  async function fail(msg) {
    if (failed) return; // the first failure is the one that matters; cleanup is under way
    failed = true;
    process.stderr.write(`${name}: FAIL: ${msg}\n`);
    await bounded(cleanup(), cleanupBudgetMs);
    process.exit(1);
  }

  const watchdog = setTimeout(() => fail(watchdogMessage), watchdogMs);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => fail(`received ${sig}`));
  }

  async function launch({ viewport, args = [] } = {}) {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found (apt-get install -y --no-install-recommends chromium)`);
    // Loaded here, after the handlers above are in place, so a signal during the
    // (slow) import is handled too.
    const { chromium } = await import('playwright-core');
    if (cleaning) throw new Error('cleanup already under way; not launching Chromium');
    userDataDir = mkdtempSync(join(tmpdir(), 'surge-chromium-'));
    launching = chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: launchTimeoutMs,
      ...(viewport ? { viewport } : {}),
      handleSIGINT: false, // our handlers clean up; playwright still kills Chromium on exit
      handleSIGTERM: false,
      handleSIGHUP: false,
      args: [...args, ...CHROMIUM_ARGS],
    });
    return launching;
  }

  async function done() {
    await cleanup();
    clearTimeout(watchdog);
  }

  async function finish(main, result) {
    try {
      const t0 = Date.now();
      const value = await main();
      await done();
      process.stdout.write(JSON.stringify(result(value, Date.now() - t0)) + '\n');
      process.exit(0);
    } catch (err) {
      await fail(err && err.message ? err.message : String(err));
    }
  }

  return { launch, fail, cleanup, done, finish, bounded, playwrightVersion };
}
