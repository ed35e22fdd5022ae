#!/usr/bin/env node
// Outside-client scenario for Surge using the independent Node `ws` client.
//
// Usage: node node_ws.mjs ws://127.0.0.1:PORT
//
// Runs the scenario twice (perMessageDeflate off, then offered) and prints one
// JSON line with the results. Exits non-zero with a message on stderr on any
// failure. Every wait is bounded; a watchdog ends the process regardless.
//
// Scenario:
//   a. connect to BASE/ws?topic=T
//   b. POST HTTP /v1/publish {"topic":T,"data":{...}} -> 200 {"result":"ok","topic":T,"seq":N>=1}
//   c. exactly one text frame {"op":"message","topic":T,"seq":N,"data":<published data>}
//   c2. POST a ~4 KiB message (above the server's 512-byte deflate threshold): it arrives
//      intact as seq N+1 (with deflate, ws inflates it), and GET /v1/stats "deflated_sent"
//      rose by exactly 1 when deflate was negotiated, by 0 when it was not (the plain
//      subscriber gets the plain frame)
//   d. ping "hello" -> pong "hello"
//   e. {"op":"subscribe","topic":T2,"id":"7"} -> {"op":"ok","id":"7",...}
//   f. close 1000 "bye" -> close event with code 1000

import { createRequire } from 'node:module';
import { isDeepStrictEqual } from 'node:util';
import WebSocket from 'ws';

const require = createRequire(import.meta.url);
const WS_VERSION = require('ws/package.json').version;

const STEP_TIMEOUT_MS = 10_000;
const WATCHDOG_MS = 25_000;
const TOPIC = 'outside.node';
const TOPIC2 = 'outside.node2';

function fail(msg) {
  process.stderr.write(`node_ws: FAIL: ${msg}\n`);
  process.exit(1);
}

const watchdog = setTimeout(() => fail(`watchdog: scenario did not finish within ${WATCHDOG_MS} ms`), WATCHDOG_MS);

const base = process.argv[2];
if (!base || !/^wss?:\/\/[^/]+$/.test(base.replace(/\/$/, ''))) {
  fail(`usage: node node_ws.mjs ws://HOST:PORT (got ${JSON.stringify(base)})`);
}
const wsBase = base.replace(/\/$/, '');
const httpBase = wsBase.replace(/^ws/, 'http');

// Event queue over one WebSocket so each step can wait for "the next thing" with a timeout.
class Conn {
  constructor(url, opts) {
    this.events = [];
    this.waiter = null;
    this.extensionsHeader = '';
    this.ws = new WebSocket(url, opts);
    this.ws.on('upgrade', (res) => { this.extensionsHeader = res.headers['sec-websocket-extensions'] || ''; });
    const push = (ev) => {
      this.events.push(ev);
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w();
      }
    };
    this.ws.on('open', () => push({ type: 'open' }));
    this.ws.on('message', (data, isBinary) => push({ type: 'message', data, isBinary }));
    this.ws.on('ping', (data) => push({ type: 'ping', data }));
    this.ws.on('pong', (data) => push({ type: 'pong', data }));
    this.ws.on('close', (code, reason) => push({ type: 'close', code, reason: reason.toString('utf8') }));
    this.ws.on('error', (err) => push({ type: 'error', err }));
    this.ws.on('unexpected-response', (req, res) => {
      push({ type: 'error', err: new Error(`upgrade refused: HTTP ${res.statusCode}`) });
      req.destroy();
    });
  }

  // next returns the next event that is not a server ping (answered by ws itself).
  async next(what) {
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    for (;;) {
      while (this.events.length > 0) {
        const ev = this.events.shift();
        if (ev.type === 'ping') continue;
        return ev;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout after ${STEP_TIMEOUT_MS} ms waiting for ${what}`);
      await new Promise((resolve) => {
        const t = setTimeout(() => { this.waiter = null; resolve(); }, left);
        this.waiter = () => { clearTimeout(t); resolve(); };
      });
    }
  }

  async expect(type, what) {
    const ev = await this.next(what);
    if (ev.type !== type) throw new Error(`waiting for ${what}: got ${describe(ev)}`);
    return ev;
  }
}

function describe(ev) {
  switch (ev.type) {
    case 'message':
      return ev.isBinary
        ? `binary frame (${ev.data.length} bytes)`
        : `text frame ${JSON.stringify(ev.data.toString('utf8'))}`;
    case 'pong':
    case 'ping':
      return `${ev.type} with payload ${JSON.stringify(ev.data.toString('utf8'))}`;
    case 'close':
      return `close code=${ev.code} reason=${JSON.stringify(ev.reason)}`;
    case 'error':
      return `error: ${ev.err && ev.err.message}`;
    default:
      return ev.type;
  }
}

function parseText(ev, what) {
  if (ev.type !== 'message') throw new Error(`waiting for ${what}: got ${describe(ev)}`);
  if (ev.isBinary) throw new Error(`waiting for ${what}: got a binary frame, want text`);
  const text = ev.data.toString('utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`waiting for ${what}: text frame is not JSON: ${JSON.stringify(text)}`);
  }
}

async function publish(topic, data) {
  const url = `${httpBase}/v1/publish`;
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ topic, data }),
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`POST ${url}: HTTP ${res.status}, body ${JSON.stringify(text)}`);
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`POST ${url}: response is not JSON: ${JSON.stringify(text)}`);
  }
  if (body.result !== 'ok' || body.topic !== topic || !Number.isInteger(body.seq) || body.seq < 1) {
    throw new Error(`POST ${url}: want {"result":"ok","topic":${JSON.stringify(topic)},"seq":>=1}, got ${text}`);
  }
  return body.seq;
}

async function stats() {
  const url = `${httpBase}/v1/stats`;
  const res = await fetch(url, { signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET ${url}: HTTP ${res.status}, body ${JSON.stringify(text)}`);
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`GET ${url}: response is not JSON: ${JSON.stringify(text)}`);
  }
  for (const k of ['deflated_sent', 'compressed_messages']) {
    if (!Number.isInteger(body[k])) throw new Error(`GET ${url}: "${k}" missing or not an integer: ${JSON.stringify(body[k])}`);
  }
  return body;
}

const LARGE_MIN_BYTES = 4096;

// largeData is a ~4 KiB compressible JSON value with non-ASCII text (UTF-8 must survive inflation).
function largeData(mode) {
  const rows = [];
  for (let i = 0; ; i++) {
    rows.push({ i, sym: `SYM${i % 17}`, px: 100 + i * 0.25, qty: (i * 37) % 1000, note: 'prix café ✓' });
    if (JSON.stringify({ mode, rows }).length >= LARGE_MIN_BYTES) return { mode, rows };
  }
}

async function scenario(mode, perMessageDeflate) {
  const data = { n: 1, s: 'héllo' };
  const conn = new Conn(`${wsBase}/ws?topic=${encodeURIComponent(TOPIC)}`, {
    perMessageDeflate,
    handshakeTimeout: STEP_TIMEOUT_MS,
  });
  const ws = conn.ws;
  try {
    // (a) connect
    await conn.expect('open', 'the upgrade to complete');
    const extensions = ws.extensions || '';
    if (!perMessageDeflate && extensions.includes('permessage-deflate')) {
      throw new Error(`server negotiated ${extensions} although the client did not offer it`);
    }

    // (b) publish over HTTP
    const seq = await publish(TOPIC, data);

    // (c) exactly one delivery
    const msg = parseText(await conn.next('the delivery'), 'the delivery');
    if (msg.op !== 'message' || msg.topic !== TOPIC || msg.seq !== seq || !isDeepStrictEqual(msg.data, data)) {
      throw new Error(
        `delivery mismatch: want {"op":"message","topic":${JSON.stringify(TOPIC)},"seq":${seq},"data":${JSON.stringify(data)}}, got ${JSON.stringify(msg)}`,
      );
    }

    // (c2) a large message: intact, and compressed for this subscriber only if deflate was negotiated
    const negotiated = extensions.includes('permessage-deflate');
    if (perMessageDeflate && !negotiated) throw new Error(`deflate offered but not negotiated (ws.extensions ${JSON.stringify(extensions)})`);
    const large = largeData(mode);
    const before = await stats();
    const largeSeq = await publish(TOPIC, large);
    if (largeSeq !== seq + 1) throw new Error(`large publish got seq ${largeSeq}, want ${seq + 1}`);
    const largeEv = await conn.next('the large delivery');
    const largeMsg = parseText(largeEv, 'the large delivery');
    if (largeMsg.op !== 'message' || largeMsg.topic !== TOPIC || largeMsg.seq !== largeSeq || !isDeepStrictEqual(largeMsg.data, large)) {
      const text = largeEv.data.toString('utf8');
      throw new Error(`large delivery mismatch (seq ${largeSeq}): got ${text.length} chars ${JSON.stringify(text.slice(0, 200))}…`);
    }
    const largeBytes = largeEv.data.length;
    if (largeBytes < LARGE_MIN_BYTES) throw new Error(`large delivery is only ${largeBytes} bytes, want >= ${LARGE_MIN_BYTES}`);
    const after = await stats();
    const deflatedDelta = after.deflated_sent - before.deflated_sent;
    const compressedDelta = after.compressed_messages - before.compressed_messages;
    const wantDelta = negotiated ? 1 : 0;
    if (deflatedDelta !== wantDelta) {
      throw new Error(
        `/v1/stats deflated_sent rose by ${deflatedDelta} (${before.deflated_sent} -> ${after.deflated_sent}) for one ${largeBytes}-byte delivery ` +
          `to the only subscriber (deflate ${negotiated ? '' : 'not '}negotiated), want ${wantDelta}`,
      );
    }

    // (d) ping / pong with payload
    ws.ping('hello');
    const pong = await conn.next('the pong');
    if (pong.type !== 'pong') throw new Error(`waiting for the pong: got ${describe(pong)} (a second delivery?)`);
    if (pong.data.toString('utf8') !== 'hello') {
      throw new Error(`pong payload ${JSON.stringify(pong.data.toString('utf8'))}, want "hello"`);
    }

    // (e) subscribe op
    ws.send(JSON.stringify({ op: 'subscribe', topic: TOPIC2, id: '7' }));
    const reply = parseText(await conn.next('the subscribe reply'), 'the subscribe reply');
    if (reply.op !== 'ok' || reply.id !== '7') {
      throw new Error(`subscribe reply: want {"op":"ok","id":"7",...}, got ${JSON.stringify(reply)}`);
    }

    // (f) close handshake
    ws.close(1000, 'bye');
    const closed = await conn.next('the close handshake');
    if (closed.type !== 'close') throw new Error(`waiting for close: got ${describe(closed)}`);
    if (closed.code !== 1000) {
      throw new Error(`close code ${closed.code} reason ${JSON.stringify(closed.reason)}, want 1000`);
    }
    // Nothing must be left over (e.g. a duplicate delivery that raced with the close).
    const extra = conn.events.filter((ev) => ev.type !== 'ping');
    if (extra.length > 0) throw new Error(`unexpected events after close: ${extra.map(describe).join(', ')}`);

    return {
      mode,
      offered_deflate: perMessageDeflate,
      extensions,
      extensions_header: conn.extensionsHeader,
      seq,
      large_seq: largeSeq,
      large_bytes: largeBytes,
      deflated_sent_delta: deflatedDelta,
      compressed_messages_delta: compressedDelta,
      close_code: closed.code,
      close_reason: closed.reason,
    };
  } catch (err) {
    ws.terminate();
    throw new Error(`[${mode}] ${err.message}`);
  }
}

try {
  const runs = [];
  runs.push(await scenario('plain', false));
  runs.push(await scenario('deflate', true));
  clearTimeout(watchdog);
  process.stdout.write(
    JSON.stringify({ client: 'node-ws', version: WS_VERSION, node: process.version, ok: true, seq: runs[0].seq, runs }) + '\n',
  );
  process.exit(0);
} catch (err) {
  fail(err.message);
}
