"""`create_app`: the FastAPI app for one loaded run, assembled from the serving modules."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from chatsmith.inference.loading import LoadedRun
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.errors import install_error_handlers
from chatsmith.serving.metrics import CountRequests
from chatsmith.serving.middleware import LOOPBACK_HOSTS, BodyGuard, CrossSiteGuard
from chatsmith.serving.routes import STATIC, embeddings_api, router
from chatsmith.serving.server import Server


@asynccontextmanager
async def _lifespan(app: FastAPI):
    """The engine thread starts with the app and stops with it."""
    app.state.server.start()
    try:
        yield
    finally:
        app.state.server.stop()


def create_app(
    loaded: LoadedRun,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    allowed_hosts: Iterable[str] | None = LOOPBACK_HOSTS,
    compile_step: bool = False,
) -> FastAPI:
    """The app for one loaded run: OpenAI-compatible endpoints and the chat page.

    `allowed_hosts`: the Host names answered (default: loopback names only, for a server bound
    to loopback); None answers any name. `compile_step`: the engine's compiled decode step.
    """
    app = FastAPI(
        title="chatsmith",
        version="1",
        lifespan=_lifespan,
        description="OpenAI-compatible API for a chatsmith model.",
    )
    app.state.server = Server(loaded, limits or ServeLimits(), api_key, compile_step)
    limits = app.state.server.limits
    app.add_middleware(BodyGuard, limit=limits.max_body_bytes, timeout=limits.body_timeout_s)
    app.add_middleware(CrossSiteGuard, allowed_hosts=allowed_hosts)  # added last: runs first
    # outermost: counts every answer, the guards' refusals included
    app.add_middleware(CountRequests, metrics=app.state.server.metrics)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(embeddings_api, include_in_schema=loaded.cfg.arch == "encoder")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
