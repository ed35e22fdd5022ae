#!/usr/bin/python3
"""Outside-client scenario for Surge using Debian's python3-websocket (websocket-client, synchronous).

Usage: /usr/bin/python3 py_websocket_client.py ws://127.0.0.1:PORT

websocket-client has no permessage-deflate support, so the scenario runs once,
without offering any extension. Prints one JSON line with the results; exits
non-zero with a message on stderr on any failure. Every socket wait is bounded
by a 10 s timeout; a watchdog ends the process regardless.

Scenario:
  a. connect to BASE/ws?topic=T
  b. POST HTTP /v1/publish {"topic":T,"data":{...}} -> 200 {"result":"ok","topic":T,"seq":N>=1}
  c. exactly one text frame {"op":"message","topic":T,"seq":N,"data":<published data>}
  d. ping "hello" -> pong "hello"
  e. {"op":"subscribe","topic":T2,"id":"7"} -> {"op":"ok","id":"7",...}
  f. close 1000 "bye" -> the server's close frame carries 1000, then the server closes TCP
"""

import json
import os
import re
import socket
import struct
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

try:
    import websocket
    from websocket import ABNF
except ImportError as exc:  # pragma: no cover - reported to the Go test
    sys.stderr.write(
        "py_websocket_client: FAIL: cannot import websocket (%s); install with: "
        "apt-get install -y --no-install-recommends python3-websocket and run with /usr/bin/python3\n" % exc
    )
    sys.exit(2)

STEP_TIMEOUT = 10.0
WATCHDOG = 25.0
TOPIC = "outside.pywsc"
TOPIC2 = "outside.pywsc2"

OPNAMES = {
    ABNF.OPCODE_CONT: "continuation",
    ABNF.OPCODE_TEXT: "text",
    ABNF.OPCODE_BINARY: "binary",
    ABNF.OPCODE_CLOSE: "close",
    ABNF.OPCODE_PING: "ping",
    ABNF.OPCODE_PONG: "pong",
}


def die(msg):
    sys.stderr.write("py_websocket_client: FAIL: %s\n" % msg)
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


def describe(opcode, frame):
    name = OPNAMES.get(opcode, "opcode %d" % opcode)
    data = frame.data
    if opcode == ABNF.OPCODE_CLOSE and len(data) >= 2:
        return "close frame code=%d reason=%r" % (struct.unpack("!H", data[:2])[0], data[2:].decode("utf-8", "replace"))
    return "%s frame %r" % (name, data[:200])


def next_frame(ws, what):
    """Next complete data message or pong. Server pings are answered by the library (and skipped)."""
    while True:
        try:
            opcode, frame = ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketTimeoutException:
            raise Fail("timeout after %gs waiting for %s" % (STEP_TIMEOUT, what))
        except socket.timeout:
            raise Fail("timeout after %gs waiting for %s" % (STEP_TIMEOUT, what))
        except websocket.WebSocketConnectionClosedException as exc:
            raise Fail("connection closed while waiting for %s: %s" % (what, exc))
        except websocket.WebSocketException as exc:
            raise Fail("protocol error while waiting for %s: %s: %s" % (what, type(exc).__name__, exc))
        if opcode == ABNF.OPCODE_PING:
            continue
        return opcode, frame


def recv_json(ws, what):
    opcode, frame = next_frame(ws, what)
    if opcode != ABNF.OPCODE_TEXT:
        raise Fail("waiting for %s: got %s, want a text frame" % (what, describe(opcode, frame)))
    try:
        return json.loads(frame.data.decode("utf-8"))
    except ValueError:
        raise Fail("waiting for %s: text frame is not JSON: %r" % (what, frame.data))


def scenario(ws_base, http_base):
    data = {"n": 1, "s": "h\u00e9llo"}
    url = "%s/ws?topic=%s" % (ws_base, urllib.parse.quote(TOPIC, safe=""))
    # (a) connect; the timeout applies to every later socket operation too.
    try:
        ws = websocket.create_connection(url, timeout=STEP_TIMEOUT)
    except Exception as exc:
        raise Fail("connect %s: %s: %s" % (url, type(exc).__name__, exc))
    try:
        headers = ws.getheaders() or {}
        extensions_header = headers.get("sec-websocket-extensions", "") or ""
        if extensions_header:
            raise Fail("server negotiated extensions %r although the client offered none" % extensions_header)

        # (b) publish over HTTP
        seq = publish(http_base, TOPIC, data)

        # (c) exactly one delivery (a second one would show up in step (d) or (e)).
        msg = recv_json(ws, "the delivery")
        want = {"op": "message", "topic": TOPIC, "seq": seq, "data": data}
        if not isinstance(msg, dict) or any(msg.get(k) != v for k, v in want.items()) or isinstance(msg.get("seq"), bool):
            raise Fail("delivery mismatch: want %s, got %s" % (json.dumps(want), json.dumps(msg)))

        # (d) ping/pong; websocket-client hands the pong frame back with its payload.
        ws.ping("hello")
        opcode, frame = next_frame(ws, "the pong")
        if opcode != ABNF.OPCODE_PONG:
            raise Fail("waiting for the pong: got %s" % describe(opcode, frame))
        if frame.data != b"hello":
            raise Fail("pong payload %r, want b'hello'" % frame.data)

        # (e) subscribe op
        ws.send(json.dumps({"op": "subscribe", "topic": TOPIC2, "id": "7"}))
        reply = recv_json(ws, "the subscribe reply")
        if not isinstance(reply, dict) or reply.get("op") != "ok" or reply.get("id") != "7":
            raise Fail('subscribe reply: want {"op":"ok","id":"7",...}, got %s' % json.dumps(reply))

        # (f) close handshake, done by hand: ws.close() swallows the server's code.
        ws.send_close(1000, b"bye")
        while True:
            try:
                frame = ws.recv_frame()
            except (websocket.WebSocketTimeoutException, socket.timeout):
                raise Fail("timeout after %gs waiting for the server's close frame" % STEP_TIMEOUT)
            except websocket.WebSocketConnectionClosedException:
                raise Fail("server closed TCP without sending a close frame")
            except websocket.WebSocketException as exc:
                raise Fail("protocol error waiting for the close frame: %s: %s" % (type(exc).__name__, exc))
            if frame.opcode == ABNF.OPCODE_CLOSE:
                break
            if frame.opcode in (ABNF.OPCODE_PING, ABNF.OPCODE_PONG):
                continue  # control frames may still arrive; no reply needed once closing
            raise Fail("unexpected %s after sending close" % describe(frame.opcode, frame))
        if len(frame.data) < 2:
            raise Fail("server's close frame has no status code, want 1000")
        close_code = struct.unpack("!H", frame.data[:2])[0]
        close_reason = frame.data[2:].decode("utf-8", "replace")
        if close_code != 1000:
            raise Fail("close code %d reason %r, want 1000" % (close_code, close_reason))

        # RFC 6455 7.1.1: after the close handshake the server closes TCP first.
        try:
            rest = ws.sock.recv(64)
        except socket.timeout:
            raise Fail("server did not close TCP within %gs after the close handshake" % STEP_TIMEOUT)
        except OSError:
            rest = b""  # reset after close: still closed
        if rest:
            raise Fail("unexpected bytes after the close frame: %r" % rest)

        return {
            "mode": "plain",
            "offered_deflate": False,
            "extensions_header": extensions_header,
            "seq": seq,
            "pong_payload": "hello",
            "close_code": close_code,
            "close_reason": close_reason,
        }
    finally:
        ws.shutdown()


def main():
    if len(sys.argv) != 2 or not re.match(r"^wss?://[^/]+/?$", sys.argv[1]):
        raise Fail("usage: /usr/bin/python3 py_websocket_client.py ws://HOST:PORT (got %r)" % sys.argv[1:])
    ws_base = sys.argv[1].rstrip("/")
    http_base = "http" + ws_base[2:]
    run = scenario(ws_base, http_base)
    return {
        "client": "python-websocket-client",
        "version": websocket.__version__,
        "python": sys.version.split()[0],
        "ok": True,
        "seq": run["seq"],
        "runs": [run],
    }


if __name__ == "__main__":
    timer = threading.Timer(WATCHDOG, die, args=("watchdog: scenario did not finish within %gs" % WATCHDOG,))
    timer.daemon = True
    timer.start()
    try:
        result = main()
    except Fail as exc:
        die(str(exc))
    except Exception as exc:  # unexpected: still one clear line
        die("%s: %s" % (type(exc).__name__, exc))
    timer.cancel()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
