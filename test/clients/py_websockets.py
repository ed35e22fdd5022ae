#!/usr/bin/python3
"""Outside-client scenario for Surge using Debian's python3-websockets (asyncio API).

Usage: /usr/bin/python3 py_websockets.py ws://127.0.0.1:PORT

Runs the scenario twice (compression off, then permessage-deflate offered) and
prints one JSON line with the results. Exits non-zero with a message on stderr
on any failure. Every wait is bounded; a watchdog ends the process regardless.

Scenario:
  a. connect to BASE/ws?topic=T
  b. POST HTTP /v1/publish {"topic":T,"data":{...}} -> 200 {"result":"ok","topic":T,"seq":N>=1}
  c. exactly one text frame {"op":"message","topic":T,"seq":N,"data":<published data>}
  d. ping "hello" -> pong "hello"
  e. {"op":"subscribe","topic":T2,"id":"7"} -> {"op":"ok","id":"7",...}
  f. close 1000 "bye" -> the server's close frame carries 1000

Written against websockets 10.4 (Debian 12), whose websockets.connect is the
legacy asyncio client; it also works with the same names on later versions'
legacy client.
"""

import asyncio
import json
import os
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

try:
    import websockets
except ImportError as exc:  # pragma: no cover - reported to the Go test
    sys.stderr.write(
        "py_websockets: FAIL: cannot import websockets (%s); install with: "
        "apt-get install -y --no-install-recommends python3-websockets and run with /usr/bin/python3\n" % exc
    )
    sys.exit(2)

STEP_TIMEOUT = 10.0
WATCHDOG = 25.0
TOPIC = "outside.pyws"
TOPIC2 = "outside.pyws2"


def die(msg):
    sys.stderr.write("py_websockets: FAIL: %s\n" % msg)
    sys.stderr.flush()
    os._exit(1)


class Fail(Exception):
    pass


def publish(http_base, topic, data):
    url = http_base + "/v1/publish"
    body = json.dumps({"topic": topic, "data": data}).encode("utf-8")
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=STEP_TIMEOUT) as res:
            status, text = res.status, res.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode("utf-8", "replace")
    except OSError as err:
        raise Fail("POST %s: %s" % (url, err))
    if status != 200:
        raise Fail("POST %s: HTTP %d, body %r" % (url, status, text))
    try:
        got = json.loads(text)
    except ValueError:
        raise Fail("POST %s: response is not JSON: %r" % (url, text))
    seq = got.get("seq") if isinstance(got, dict) else None
    if (
        not isinstance(got, dict)
        or got.get("result") != "ok"
        or got.get("topic") != topic
        or not isinstance(seq, int)
        or isinstance(seq, bool)
        or seq < 1
    ):
        raise Fail('POST %s: want {"result":"ok","topic":%s,"seq":>=1}, got %s' % (url, json.dumps(topic), text))
    return seq


async def recv_json(ws, what):
    try:
        frame = await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
    except asyncio.TimeoutError:
        raise Fail("timeout after %gs waiting for %s" % (STEP_TIMEOUT, what))
    except websockets.exceptions.ConnectionClosed as exc:
        raise Fail("connection closed while waiting for %s: %s" % (what, exc))
    if isinstance(frame, bytes):
        raise Fail("waiting for %s: got a binary frame (%d bytes), want text" % (what, len(frame)))
    try:
        return json.loads(frame)
    except ValueError:
        raise Fail("waiting for %s: text frame is not JSON: %r" % (what, frame))


async def scenario(ws_base, http_base, mode, compression):
    data = {"n": 1, "s": "h\u00e9llo"}
    url = "%s/ws?topic=%s" % (ws_base, urllib.parse.quote(TOPIC, safe=""))
    try:
        # (a) connect. ping_interval=None: no keepalive pings of our own to confuse step (d).
        ws = await websockets.connect(
            url,
            compression=compression,
            open_timeout=STEP_TIMEOUT,
            close_timeout=STEP_TIMEOUT,
            ping_interval=None,
        )
    except Exception as exc:
        raise Fail("[%s] connect %s: %s: %s" % (mode, url, type(exc).__name__, exc))
    try:
        extensions_header = ws.response_headers.get("Sec-WebSocket-Extensions", "") or ""
        extensions = [type(e).__name__ for e in ws.extensions]
        if compression is None and "permessage-deflate" in extensions_header:
            raise Fail("server negotiated %r although the client did not offer it" % extensions_header)

        # (b) publish over HTTP, off the event loop.
        seq = await asyncio.get_running_loop().run_in_executor(None, publish, http_base, TOPIC, data)

        # (c) exactly one delivery (a second one would show up in step (e)).
        msg = await recv_json(ws, "the delivery")
        want = {"op": "message", "topic": TOPIC, "seq": seq, "data": data}
        if not isinstance(msg, dict) or any(msg.get(k) != v for k, v in want.items()) or isinstance(msg.get("seq"), bool):
            raise Fail("delivery mismatch: want %s, got %s" % (json.dumps(want), json.dumps(msg)))

        # (d) ping/pong. The waiter resolves only when a pong whose payload equals
        # b"hello" arrives (websockets matches pongs to pings by payload).
        waiter = await ws.ping("hello")
        try:
            await asyncio.wait_for(waiter, STEP_TIMEOUT)
        except asyncio.TimeoutError:
            raise Fail("timeout after %gs waiting for a pong with payload 'hello'" % STEP_TIMEOUT)
        except websockets.exceptions.ConnectionClosed as exc:
            raise Fail("connection closed while waiting for the pong: %s" % exc)

        # (e) subscribe op
        await ws.send(json.dumps({"op": "subscribe", "topic": TOPIC2, "id": "7"}))
        reply = await recv_json(ws, "the subscribe reply")
        if not isinstance(reply, dict) or reply.get("op") != "ok" or reply.get("id") != "7":
            raise Fail('subscribe reply: want {"op":"ok","id":"7",...}, got %s' % json.dumps(reply))

        # (f) close handshake. close() waits up to close_timeout for the server's
        # close frame; close_code is 1006 if none came.
        try:
            await asyncio.wait_for(ws.close(code=1000, reason="bye"), STEP_TIMEOUT + 2)
        except asyncio.TimeoutError:
            raise Fail("timeout waiting for the close handshake")
        if ws.close_code != 1000:
            raise Fail("close code %r reason %r, want 1000" % (ws.close_code, ws.close_reason))
        # Anything still queued (e.g. a duplicate delivery) is an error.
        leftover = list(ws.messages) if hasattr(ws, "messages") else []
        if leftover:
            raise Fail("unexpected frames left after close: %r" % leftover)

        return {
            "mode": mode,
            "offered_deflate": compression is not None,
            "extensions": extensions,
            "extensions_header": extensions_header,
            "seq": seq,
            "close_code": ws.close_code,
            "close_reason": ws.close_reason,
        }
    except Fail as exc:
        ws.transport.abort()
        raise Fail("[%s] %s" % (mode, exc))


async def main():
    if len(sys.argv) != 2 or not re.match(r"^wss?://[^/]+/?$", sys.argv[1]):
        raise Fail("usage: /usr/bin/python3 py_websockets.py ws://HOST:PORT (got %r)" % sys.argv[1:])
    ws_base = sys.argv[1].rstrip("/")
    http_base = "http" + ws_base[2:]
    runs = [
        await scenario(ws_base, http_base, "plain", None),
        await scenario(ws_base, http_base, "deflate", "deflate"),
    ]
    return {
        "client": "python-websockets",
        "version": websockets.__version__,
        "python": sys.version.split()[0],
        "ok": True,
        "seq": runs[0]["seq"],
        "runs": runs,
    }


if __name__ == "__main__":
    timer = threading.Timer(WATCHDOG, die, args=("watchdog: scenario did not finish within %gs" % WATCHDOG,))
    timer.daemon = True
    timer.start()
    try:
        result = asyncio.run(main())
    except Fail as exc:
        die(str(exc))
    except Exception as exc:  # unexpected: still one clear line
        die("%s: %s" % (type(exc).__name__, exc))
    timer.cancel()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
