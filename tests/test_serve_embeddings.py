"""`POST /v1/embeddings` on an encoder run, through the real `openai` client."""

from __future__ import annotations

import base64
import json
import threading

import httpx
import numpy as np
import openai
import pytest
import torch

from chatsmith.inference.embeddings import embed_texts
from chatsmith.inference.loading import load_run
from chatsmith.serving.app import create_app
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.live import LiveServer

KEY = "embed-key"
TEXTS = ["hello there", "how are you doing today?", "I like my dog very much"]


@pytest.fixture(scope="module")
def loaded(encoder_run):
    return load_run(encoder_run, "cpu")


@pytest.fixture(scope="module")
def live(loaded):
    app = create_app(loaded, ServeLimits(max_batch=4, max_queue=8), api_key=KEY)
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def post(live, body: dict, key: str = KEY) -> httpx.Response:
    return httpx.post(
        live.url + "/v1/embeddings",
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=60,
    )


def test_openai_client_embeddings_match_the_cli_embeddings(client, loaded):
    want, tokens = embed_texts(loaded, TEXTS)
    # without encoding_format the client asks for base64 and decodes it itself
    for fmt in ({"encoding_format": "float"}, {}):
        res = client.embeddings.create(model=loaded.name, input=TEXTS, **fmt)
        got = torch.tensor([d.embedding for d in sorted(res.data, key=lambda d: d.index)])
        assert torch.allclose(got, want, atol=1e-6)
        assert res.usage.prompt_tokens == res.usage.total_tokens == tokens
        assert res.model == loaded.name
    one = client.embeddings.create(model="any", input=TEXTS[1])
    assert len(one.data) == 1 and torch.allclose(
        torch.tensor(one.data[0].embedding), want[1], atol=1e-6
    )


def test_token_arrays_base64_and_dimensions(live, loaded):
    ids = loaded.tokenizer.encode("hello there")
    width = loaded.cfg.d_model
    body = {"model": "m", "input": [ids, ids[:1]], "encoding_format": "base64", "dimensions": width}
    r = post(live, body)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    vec = np.frombuffer(base64.b64decode(data[0]["embedding"]), dtype="<f4")
    assert vec.shape == (width,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    assert r.json()["usage"]["prompt_tokens"] == len(ids) + 1
    # a single token array is one input
    assert len(post(live, {"model": "m", "input": ids}).json()["data"]) == 1

    r = post(live, {"model": "m", "input": "hi", "dimensions": width // 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    r = post(live, {"model": "m", "input": [loaded.cfg.vocab_size + 5]})
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
    r = post(live, {"model": "m", "input": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = post(live, {"model": "m", "input": [1] * (loaded.cfg.max_seq_len + 1)})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert post(live, {"model": "m", "input": "hi"}, key="wrong").status_code == 401


def test_concurrent_requests_share_forward_passes(live, loaded, client):
    want, _ = embed_texts(loaded, TEXTS)
    auth = {"Authorization": f"Bearer {KEY}"}  # health shows traffic figures to key holders
    before = httpx.get(live.url + "/health", headers=auth).json()
    results: dict[int, list] = {}

    def ask(i: int) -> None:
        res = client.embeddings.create(model="m", input=TEXTS[i % 3])
        results[i] = res.data[0].embedding

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, vec in results.items():
        assert torch.allclose(torch.tensor(vec), want[i % 3], atol=1e-6)
    after = httpx.get(live.url + "/health", headers=auth).json()
    assert after["requests"] - before["requests"] == 12
    assert after["forward_passes"] - before["forward_passes"] <= 12


def test_schema_lists_embeddings_only_for_an_encoder(live, tiny_run):
    assert "/v1/embeddings" in httpx.get(live.url + "/openapi.json").json()["paths"]
    app = create_app(load_run(tiny_run, "cpu"), ServeLimits(max_batch=2))
    assert "/v1/embeddings" not in app.openapi()["paths"]


def test_chat_routes_refuse_an_encoder(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "encoder" in str(e.value)


def test_embeddings_refused_on_a_decoder_run(tiny_run):
    app = create_app(load_run(tiny_run, "cpu"), ServeLimits(max_batch=2))
    with LiveServer(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            c.embeddings.create(model="m", input="hi")
    assert "encoder" in str(e.value)
