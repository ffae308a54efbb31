"""Watch a headless device from a browser: the live overlay as MJPEG and the loop's figures as JSON.

    /               a page: the stream, the view, FPS, per-stage p50/p90, drops, reconnects, model, device
    /stream.mjpg    multipart/x-mixed-replace JPEGs (any browser shows it in an <img>)
    /snapshot.jpg   the newest frame
    /stats.json     the figures, for scripts

The standard library's HTTP server is enough here (a handful of viewers on a LAN, no package to install
on a Jetson), bounded so that whatever connects cannot grow it (edgeseg.runtime.loop.httpserver), with
every value on the page set as text. The loop never waits for it: :meth:`publish`
swaps a reference; one encoder thread JPEG-encodes the newest frame at most ``fps`` times a second
and only while someone watches; each viewer is sent the newest JPEG when it is ready for one, so a
slow viewer skips frames instead of building a backlog, and viewers never wait on each other.
"""

from __future__ import annotations

import contextlib
import hmac
import html
import json
import secrets
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.loop.httpserver import (
    MAX_CLIENTS,
    MAX_HEAD_BYTES,
    REQUEST_TIMEOUT,
    BoundedHTTPServer,
    BoundedHTTPServer6,
    HeadLimit,
    HeadTooLarge,
)

BOUNDARY = "edgeseg-frame"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_address(text: str) -> tuple[str, int]:
    """``8080``, ``:8080``, ``0.0.0.0:8080`` or ``[::1]:8080`` -> (host, port); host 127.0.0.1 by default."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise EdgesegError(f"--serve {text!r}: expected [HOST:]PORT, for example 8080 or 0.0.0.0:8080") from None
    if not 0 <= number <= 65535:
        raise EdgesegError(f"--serve {text!r}: port {number} is not 0..65535")
    return host, number


class StreamServer:
    """An HTTP server on its own threads, fed by :meth:`publish` (frames) and :meth:`set_stats`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, token: str | None = None, quality: int = 80,
                 max_width: int = 640, fps: float = 15.0, title: str = "edgeseg",
                 max_clients: int = MAX_CLIENTS) -> None:
        """At most ``max_clients`` connections served at once, at most half of them watching the stream (a
        stream holds its connection), so that the page and /stats.json still answer."""
        if not 10 <= quality <= 100:
            raise EdgesegError(f"--serve-quality {quality}: choose 10..100")
        if fps <= 0:
            raise EdgesegError(f"--serve-fps {fps}: must be above 0")
        if token is not None and not token.strip():  # "" (an unset $TOKEN) would let every request in
            raise EdgesegError("--serve-token is empty or blank (an unset variable?): give a token, or leave the "
                               "option out to serve without authentication")
        self.token, self.quality, self.max_width, self.interval, self.title = token, quality, max_width, 1 / fps, title
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None  # newest rendered frame (the loop's own array, never copied)
        self._frame_seq = 0
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self._stats: dict = {}
        self._viewers = 0
        self._viewer_slots = threading.BoundedSemaphore(max(1, max_clients // 2))
        self._closed = False
        server_class = BoundedHTTPServer6 if ":" in host else BoundedHTTPServer
        try:
            self._http = server_class((host, port), self._handler(), max_clients)
        except OSError as e:
            raise EdgesegError(f"--serve {host}:{port}: cannot listen there ({e.strerror})") from None
        self.host, self.port = host, self._http.server_address[1]
        self._threads = [threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
                                          name="edgeseg-serve", daemon=True),
                         threading.Thread(target=self._encode_loop, name="edgeseg-encode", daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={quote(self.token)}" if self.token else "")

    @property
    def viewers(self) -> int:
        return self._viewers

    def publish(self, frame: np.ndarray) -> None:
        """Hand over the newest rendered frame (BGR or BGRA). Returns at once; the frame must not be
        modified afterwards (the loop renders a new array every frame)."""
        with self._cond:
            self._frame, self._frame_seq = frame, self._frame_seq + 1
            self._cond.notify_all()

    def set_stats(self, stats: dict) -> None:
        self._stats = stats  # replaced whole: readers see the old or the new dict, never a mix

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._http.shutdown()
        self._http.server_close()
        for t in self._threads:
            t.join(timeout=5)

    # --- the encoder thread ---------------------------------------------------------------------

    def _encode_loop(self) -> None:
        done, last = 0, 0.0
        while True:
            with self._cond:
                while not self._closed and (self._frame_seq == done or self._viewers == 0):
                    self._cond.wait(timeout=0.5)
                if self._closed:
                    return
                frame, seq = self._frame, self._frame_seq
            wait = last + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
                with self._cond:  # a newer frame may have come while waiting
                    frame, seq = self._frame, self._frame_seq
            last = time.monotonic()
            data = self._encode(frame)
            with self._cond:  # a frame JPEG cannot hold (over 65,500 px) is skipped, the last JPEG kept
                if data is not None:
                    self._jpeg, self._jpeg_seq = data, seq
                done = seq
                self._cond.notify_all()

    def _encode(self, frame: np.ndarray) -> bytes | None:
        if frame.ndim == 3 and frame.shape[2] == 4:  # a cut-out: its transparent background shown grey
            alpha = frame[:, :, 3:] / 255.0
            frame = (frame[:, :, :3] * alpha + 128 * (1 - alpha)).astype(np.uint8)
        if frame.shape[1] > self.max_width:
            h = round(frame.shape[0] * self.max_width / frame.shape[1])
            frame = cv2.resize(frame, (self.max_width, max(1, h)), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        return data.tobytes() if ok else None

    def _next_jpeg(self, first: int, timeout: float) -> tuple[bytes | None, int]:
        """The newest JPEG once it encodes frame ``first`` or a later one (None after ``timeout`` or on close)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed and (self._jpeg is None or self._jpeg_seq < first):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, first - 1
                self._cond.wait(timeout=left)
            return (None, first - 1) if self._closed else (self._jpeg, self._jpeg_seq)

    def _watching(self, delta: int) -> None:
        with self._cond:
            self._viewers += delta
            self._cond.notify_all()

    # --- HTTP -------------------------------------------------------------------------------------

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = REQUEST_TIMEOUT  # a request that does not arrive, a viewer that stops reading: dropped

            def log_message(self, *args) -> None:  # no access log on the loop's terminal
                pass

            def setup(self) -> None:
                super().setup()
                self.rfile = HeadLimit(self.rfile)

            def handle_one_request(self) -> None:
                self.rfile.left = MAX_HEAD_BYTES  # per request of a kept-alive connection
                try:
                    super().handle_one_request()
                except HeadTooLarge:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self._send(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request head too large\n",
                                   "text/plain")
                except (TimeoutError, ConnectionError):
                    self.close_connection = True

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if server.token is not None and not self._authorized(url):
                    return self._send(HTTPStatus.UNAUTHORIZED, b"token required: add ?token=...\n", "text/plain")
                route = {"/": self._page, "/stream.mjpg": self._stream, "/snapshot.jpg": self._snapshot,
                         "/stats.json": self._stats}.get(url.path)
                if route is None:
                    return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):  # viewer gone
                    route()

            def _authorized(self, url) -> bool:
                given = parse_qs(url.query).get("token", [""])[0]
                bearer = self.headers.get("Authorization", "")
                given = given or (bearer[7:] if bearer.startswith("Bearer ") else "")
                return hmac.compare_digest(given.encode(), server.token.encode())

            def end_headers(self) -> None:  # on every response, the stream's included
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Referrer-Policy", "no-referrer")
                super().end_headers()

            def _send(self, status: HTTPStatus, body: bytes, ctype: str, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")  # a kept-alive connection would hold a thread
                self.close_connection = True
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _page(self) -> None:
                query = f"?token={quote(server.token)}" if server.token else ""
                stats = json.dumps({**server._stats, "viewers": server.viewers}).replace("</", "<\\/")
                nonce = secrets.token_urlsafe(16)
                body = (PAGE.replace("{title}", html.escape(server.title)).replace("{query}", query)
                        .replace("{stats}", stats).replace("{nonce}", nonce))
                csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self'; "
                       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
                self._send(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": csp})

            def _stats(self) -> None:
                body = json.dumps({**server._stats, "viewers": server.viewers}).encode()
                self._send(HTTPStatus.OK, body, "application/json")

            def _snapshot(self) -> None:
                server._watching(+1)
                try:  # a frame rendered after the request, or the newest there is when the loop has stopped
                    jpeg, _ = server._next_jpeg(max(1, server._frame_seq), timeout=5.0)
                    jpeg = jpeg or server._jpeg
                finally:
                    server._watching(-1)
                if jpeg is None:
                    return self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n", "text/plain")
                self._send(HTTPStatus.OK, jpeg, "image/jpeg")

            def _stream(self) -> None:
                if not server._viewer_slots.acquire(blocking=False):
                    return self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"too many viewers\n", "text/plain")
                try:
                    self._stream_to_viewer()
                finally:
                    server._viewer_slots.release()

            def _stream_to_viewer(self) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                server._watching(+1)
                try:
                    seq = 0
                    while True:
                        jpeg, seq = server._next_jpeg(seq + 1, timeout=1.0)
                        if server._closed:
                            return
                        if jpeg is None:
                            continue
                        self.wfile.writelines((f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                               f"{len(jpeg)}\r\n\r\n".encode(), jpeg, b"\r\n"))
                        self.wfile.flush()
                finally:
                    server._watching(-1)

        return Handler


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title>
<style nonce="{nonce}">
body { margin: 0; background: #111; color: #ddd; font: 14px system-ui, sans-serif; display: flex; flex-wrap: wrap; }
#view { flex: 1 1 560px; padding: 8px; } #view img { width: 100%; max-width: 1280px; display: block; background: #222; }
#facts { flex: 0 1 340px; padding: 8px 16px; } table { border-collapse: collapse; width: 100%; }
td { padding: 2px 6px; border-bottom: 1px solid #333; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
h1 { font-size: 16px; } #fps { font-size: 28px; color: #fc0; }
</style></head>
<body>
<div id="view"><img id="stream" src="/stream.mjpg{query}" alt="live overlay"></div>
<div id="facts">
<h1>{title}</h1>
<div><span id="fps">-</span> FPS</div>
<table id="stages"></table>
<table id="info"></table>
</div>
<script nonce="{nonce}">
const q = "{query}";
function table(id, rows, numeric) {  // every value set as text, never as markup
  const el = document.getElementById(id);
  el.replaceChildren(...rows.map(cells => {
    const tr = document.createElement("tr");
    cells.forEach((c, i) => {
      const td = tr.insertCell();
      td.textContent = c;
      if (i && numeric) td.className = "n";
    });
    return tr;
  }));
}
function ms(v) {  // null: too few frames for that percentile yet (the run report's rule)
  return v == null ? "" : v.toFixed(2);
}
function show(s) {
  document.getElementById("fps").textContent = (s.fps || 0).toFixed(1);
  table("stages", [["stage", "p50 ms", "p90 ms"],
                   ...Object.entries(s.stages_ms || {}).map(([name, st]) => [name, ms(st.p50), ms(st.p90)])], true);
  table("info", Object.entries(s.info || {}).map(([k, v]) => [k, String(v)]), false);
}
async function refresh() {
  try { show(await (await fetch("/stats.json" + q, {cache: "no-store"})).json()); }
  catch (e) { /* the device went away; keep trying */ }
}
show({stats});  // the figures as served with the page, then refreshed every second
setInterval(refresh, 1000);
</script>
</body></html>
"""
