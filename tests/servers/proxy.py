"""A loopback TCP proxy that can cut a connection after N bytes (mid-FETCH faults) and then
refuse connections for a while, as a restarting mail server does, or answer slowly."""

from __future__ import annotations

import socket
import threading
import time


class CuttingProxy:
    """Forward to (host, port); the first `cuts` connections die after `cut_after` bytes down.

    With `refuse_for`, each cut is a server restart: the proxy stops listening (connections
    are refused) for that many seconds, then listens again on the same port. With
    `delay_down`, every chunk the server sends waits that long first (a slow server or link).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        cut_after: int,
        cuts: int = 1,
        refuse_for: float = 0.0,
        delay_down: float = 0.0,
    ):
        self.target = (host, port)
        self.delay_down = delay_down
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.refuse_for = refuse_for
        self.port = 0
        self.listener = self._listen()
        self.port = self.listener.getsockname()[1]
        self.cut_count = 0
        self.lock = threading.Lock()
        self.open_sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _listen(self) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while not self.closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                limit = self.cut_after if self.cuts_left > 0 else None
                self.cuts_left -= 1
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open_sockets += [client, upstream]
            up = (client, upstream, None, 0.0)
            down = (upstream, client, limit, self.delay_down)
            threading.Thread(target=self._pipe, args=up, daemon=True).start()
            threading.Thread(target=self._pipe, args=down, daemon=True).start()

    def _pipe(
        self, source: socket.socket, sink: socket.socket, limit: int | None, delay: float
    ) -> None:
        sent = 0
        cut = False
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if delay:
                    time.sleep(delay)
                if limit is not None and sent + len(data) >= limit:
                    sink.sendall(data[: max(0, limit - sent)])
                    with self.lock:
                        self.cut_count += 1
                    cut = True
                    if self.refuse_for:
                        self._stop_listening()  # before the client sees the cut and retries
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if cut and self.refuse_for:
            time.sleep(self.refuse_for)
            if not self.closed:
                self.listener = self._listen()
                threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _stop_listening(self) -> None:
        # shutdown, not only close: close() leaves a socket that a thread is blocked in
        # accept() on still listening, so connections would not be refused.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()

    def cut_all(self) -> None:
        """End every forwarded connection now, in both directions, with no word to either side
        (a network that drops)."""
        with self.lock:
            sockets, self.open_sockets = self.open_sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        self._stop_listening()
