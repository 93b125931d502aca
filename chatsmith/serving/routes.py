"""The HTTP routes: OpenAI-compatible `/v1/...`, `/health`, `/metrics`, the chat page at `/`.

Routes only parse and delegate: prompts and sampling come from the app's `Server`
(`app.state.server`, handed in by the `server` dependency), answers from `responses`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from chatsmith.serving.embeddings import embedding_response
from chatsmith.serving.errors import APIError
from chatsmith.serving.middleware import authorize, key_matches
from chatsmith.serving.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from chatsmith.serving.responses import CHAT, COMPLETION, respond
from chatsmith.serving.server import Server

STATIC = Path(__file__).parent / "static"


def server(request: Request) -> Server:
    return request.app.state.server


router = APIRouter()
openai_api = APIRouter(dependencies=[Depends(authorize)], tags=["openai"])


@router.get("/health", tags=["server"])
async def health(request: Request, srv: Server = Depends(server)) -> JSONResponse:
    """200 while requests can be served, 503 with the reason when not (engine thread dead or
    stuck). With an API key set, only callers with the key see the model and traffic figures."""
    problem = srv.problem()
    body = {"status": "ok"} if problem is None else {"status": "unavailable", "reason": problem}
    if srv.api_key is None or key_matches(request):
        body["model"] = srv.model_id
        body.update(srv.stats())
    return JSONResponse(body, status_code=200 if problem is None else 503)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(authorize)])
async def metrics(srv: Server = Depends(server)) -> Response:
    """Prometheus text format. Traffic figures: with an API key set, only for its holders
    (as /health's); without one, open like the rest of the server."""
    body, content_type = srv.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC / "index.html", media_type="text/html")


@openai_api.get("/v1/models")
async def list_models(srv: Server = Depends(server)) -> dict:
    return {"object": "list", "data": [srv.model_card()]}


@openai_api.get("/v1/models/{model}")
async def get_model(model: str, srv: Server = Depends(server)) -> dict:
    if model != srv.model_id:
        raise APIError(
            404,
            f"model {model!r} not found; this server has {srv.model_id!r}",
            param="model",
            code="model_not_found",
        )
    return srv.model_card()


@openai_api.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, srv: Server = Depends(server)
):
    ids = await run_in_threadpool(srv.chat_prompt, body)
    params = srv.sampling(body, body.max_completion_tokens or body.max_tokens)
    ticket = srv.submit([ids] * len(params), params)
    return await respond(request, srv, ticket, body, len(ids), CHAT)


@openai_api.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, srv: Server = Depends(server)):
    prompts = await run_in_threadpool(srv.text_prompts, body)
    params = srv.sampling(body, body.max_tokens)
    # choices are prompt-major: all n choices of the first prompt, then of the next
    jobs = [p for p in prompts for _ in params]
    ticket = srv.submit(jobs, params * len(prompts))
    return await respond(request, srv, ticket, body, sum(map(len, prompts)), COMPLETION)


# its own router: only an encoder run's API schema lists it (other runs answer it with a 400)
embeddings_api = APIRouter(dependencies=[Depends(authorize)], tags=["openai"])


@embeddings_api.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, srv: Server = Depends(server)) -> dict:
    seqs = await run_in_threadpool(srv.embedding_inputs, body)
    vectors = await srv.embed(seqs)
    return embedding_response(vectors, body.encoding_format, srv.model_id, sum(map(len, seqs)))


router.include_router(openai_api)
