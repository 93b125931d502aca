"""uvicorn settings for the app (timeouts, connection limit), and `LiveServer`: the app on a
loopback port in a background thread (tests, notebooks, embedding)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


def _timed_h11(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers.

    uvicorn waits for headers forever: a client that sends half a header line (or connects
    and sends nothing) would hold its connection, and a place under `limit_concurrency`, for
    good. The deadline runs from the connection (or the end of the previous response) and is
    not pushed back by a trickle of bytes.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is None or self.cycle.response_complete:
                self._arm()  # still waiting for the headers of a request
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return TimedH11


def uvicorn_config(app: FastAPI, **kw) -> uvicorn.Config:
    """The uvicorn settings `chatsmith serve` uses, with the app's limits (`kw`: host, port...)."""
    limits = app.state.server.limits
    return uvicorn.Config(
        app,
        http=_timed_h11(limits.header_timeout_s),
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=16 * 1024,  # largest header block
        log_level="warning",
        lifespan="on",
        **kw,
    )


class LiveServer:
    """`with LiveServer(app) as srv: srv.url` — a real uvicorn server on a free port."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))  # bound before the thread starts: no race for the port
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn_config(app))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
