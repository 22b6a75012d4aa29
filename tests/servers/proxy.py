"""A loopback TCP proxy that can cut a connection after N bytes (mid-FETCH faults)."""

from __future__ import annotations

import socket
import threading


class CuttingProxy:
    """Forward to (host, port); the first `cuts` connections die after `cut_after` bytes down."""

    def __init__(self, host: str, port: int, *, cut_after: int, cuts: int = 1):
        self.target = (host, port)
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.cut_count = 0
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                limit = self.cut_after if self.cuts_left > 0 else None
                self.cuts_left -= 1
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    sink.sendall(data[: max(0, limit - sent)])
                    with self.lock:
                        self.cut_count += 1
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

    def close(self) -> None:
        self.closed = True
        self.listener.close()
