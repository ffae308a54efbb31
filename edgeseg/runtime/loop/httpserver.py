"""An HTTP server that whatever connects cannot grow: a connection gets a thread only once its request has
arrived (idle ones wait in a selector, without one, and are closed after REQUEST_TIMEOUT), at most
``max_clients`` threads at once (one more is answered 503), request heads of at most MAX_HEAD_BYTES, and
nothing printed when a client misbehaves. The live view (edgeseg.runtime.loop.serve) runs on it."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from socketserver import ThreadingMixIn

REQUEST_TIMEOUT = 10.0  # seconds a connection may take to send its request, or a viewer to take a frame
MAX_HEAD_BYTES = 8192  # request line and headers together
MAX_CLIENTS = 16  # connections served at once; more are answered 503 and closed
MAX_WAITING = 1024  # connections waiting for their request; more are closed at once


class HeadTooLarge(Exception):
    pass


class HeadLimit:
    """A request stream with at most ``left`` bytes of request line and headers per request."""

    def __init__(self, raw) -> None:
        self.raw, self.left = raw, MAX_HEAD_BYTES

    def readline(self, size: int = -1) -> bytes:
        line = self.raw.readline(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(line)
        if self.left < 0:
            raise HeadTooLarge
        return line

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog (socketserver's 5 made a burst of connections retry for seconds)

    def __init__(self, address: tuple[str, int], handler, max_clients: int = MAX_CLIENTS) -> None:
        self._slots = threading.BoundedSemaphore(max_clients)
        self._room = selectors.DefaultSelector()  # connections whose request has not arrived
        self._deadlines: dict[socket.socket, tuple[object, float]] = {}
        self._room_lock = threading.Lock()
        self._door_stop = threading.Event()
        super().__init__(address, handler)
        self._door = threading.Thread(target=self._watch_room, name="edgeseg-serve-door", daemon=True)
        self._door.start()

    def process_request(self, request, client_address) -> None:
        """On the accepting thread: into the waiting room, no thread yet."""
        with self._room_lock:
            if len(self._deadlines) >= MAX_WAITING:
                self.shutdown_request(request)
                return
            self._deadlines[request] = (client_address, time.monotonic() + REQUEST_TIMEOUT)
            self._room.register(request, selectors.EVENT_READ)

    def _watch_room(self) -> None:
        while not self._door_stop.is_set():
            events = self._room.select(timeout=0.25)
            now = time.monotonic()
            with self._room_lock:
                ready = [key.fileobj for key, _ in events if key.fileobj in self._deadlines]
                expired = [s for s, (_, due) in self._deadlines.items() if due < now and s not in ready]
                leaving = [(s, self._deadlines.pop(s)[0]) for s in (*ready, *expired)]
                for s, _ in leaving:
                    self._room.unregister(s)
            for s, address in leaving:
                if s in expired:
                    self.shutdown_request(s)
                elif self._slots.acquire(blocking=False):
                    ThreadingMixIn.process_request(self, s, address)  # a thread for a request that has arrived
                else:
                    with contextlib.suppress(OSError):
                        s.settimeout(1.0)
                        s.sendall(BUSY)
                    self.shutdown_request(s)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client's broken request ends that connection; nothing printed on the loop's terminal."""

    def server_close(self) -> None:
        self._door_stop.set()
        self._door.join(timeout=5)
        with self._room_lock:
            for s in list(self._deadlines):
                self._room.unregister(s)
                self.shutdown_request(s)
            self._deadlines.clear()
        self._room.close()
        super().server_close()


class BoundedHTTPServer6(BoundedHTTPServer):
    """The same server on an IPv6 address (``--serve [::1]:8080``, ``[::]:8080`` for every interface)."""

    address_family = socket.AF_INET6
