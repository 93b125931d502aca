"""The OpenAI-compatible HTTP server and the chat page (`chatsmith serve`).

Where things live, in the order a request meets them:

- `app.py`         `create_app(loaded, limits, api_key, allowed_hosts)`: assembles the pieces
                   below.
- `middleware.py`  the cross-site guard (allowed Host names: 421; JSON bodies only: 415), the
                   body guard (413 past the size limit, 408 for a stalled body) and the
                   API-key check.
- `routes.py`      the endpoints (`/v1/models`, `/v1/chat/completions`, `/v1/completions`,
                   `/health`, the page at `/`); they only parse and delegate.
- `protocol.py`    request bodies (pydantic) and the small JSON shapes (ids, usage, errors).
- `server.py`      `Server`, the state every route shares: prompts and sampling from a
                   request, submitting to the scheduler, and tokens -> text per choice
                   (stop strings through `inference.streaming.StopFilter`).
- `scheduler.py`   continuous batching: one thread owns the engine; requests join and leave
                   between decode steps; a failing forward pass fails only its requests, and
                   a dead or stuck engine thread is reported (503).
- `responses.py`   whole JSON bodies and SSE chunks; chat vs text completions differ only in
                   a `Kind` (`CHAT`, `COMPLETION`).
- `errors.py`      `APIError` and the handlers that answer every failure as OpenAI-style JSON.
- `config.py`      `ServeLimits`; `live.py` holds the uvicorn settings (header deadline,
                   keep-alive, connection limit) and runs the app on a loopback port (tests,
                   notebooks);
                   `static/` holds the chat page (plain HTML/JS/CSS).

Imports point down into `inference` (engine, loading, streaming), never back.
"""
