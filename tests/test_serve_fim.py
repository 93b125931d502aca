"""`suffix` in /v1/completions (fill-in-the-middle) through the real `openai` client, and a code
model refusing chat over the API."""

from __future__ import annotations

import dataclasses

import openai
import pytest

from chatsmith.data.fim import infill_prompt
from chatsmith.inference.completion import suffix_stops
from chatsmith.inference.engine import Engine, SamplingParams
from chatsmith.inference.loading import load_run
from chatsmith.inference.streaming import cut_at_stops
from chatsmith.serving.app import create_app
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.live import LiveServer

PREFIX, SUFFIX = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_run(tiny_run, "cpu")


@pytest.fixture(scope="module")
def client(loaded):
    app = create_app(loaded, ServeLimits(max_batch=4, max_queue=8))
    with LiveServer(app) as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=30)


def test_suffix_fills_the_middle_streamed_or_not(client, loaded):
    tok = loaded.tokenizer
    prompt = infill_prompt(tok, PREFIX, SUFFIX, 10**9)
    engine = Engine(loaded.model, stop_ids=sorted(tok.special_ids))
    written = tok.decode(engine.generate(prompt, SamplingParams(max_tokens=10, temperature=0)))
    expected = cut_at_stops(written, suffix_stops(SUFFIX))
    kw = dict(model="m", prompt=PREFIX, suffix=SUFFIX, max_tokens=10, temperature=0)
    r = client.completions.create(**kw)
    assert r.usage.prompt_tokens == len(prompt)  # the suffix and the FIM markers reached it
    assert r.choices[0].text == expected
    streamed = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected
    plain = client.completions.create(model="m", prompt=PREFIX, max_tokens=10, temperature=0)
    assert plain.usage.prompt_tokens == 1 + len(tok.encode(PREFIX))
    # an empty suffix means nothing after the cursor: a plain continuation
    empty = client.completions.create(model="m", prompt=PREFIX, suffix="", max_tokens=10)
    assert empty.usage.prompt_tokens == plain.usage.prompt_tokens


def test_the_middle_ends_where_the_model_writes_the_suffix(client, loaded):
    """A suffix whose first line is a word the model writes early: the server ends the text
    there (finish_reason "stop"), streamed or not, as `suffix_stops` says."""
    tok = loaded.tokenizer
    engine = Engine(loaded.model, stop_ids=sorted(tok.special_ids))
    greedy = SamplingParams(max_tokens=16, temperature=0)
    prefix = "Hello, how are"
    for stop in ("I", "e", "a", "o", "t", "."):  # one the tiny model writes within its reply
        written = tok.decode(
            engine.generate(infill_prompt(tok, prefix, stop + "\n", 10**9), greedy)
        )
        if stop in written:
            break
    else:
        pytest.fail(f"the tiny model wrote none of the candidate stops: {written!r}")
    kw = dict(model="m", prompt=prefix, suffix=stop + "\n", max_tokens=16, temperature=0)
    r = client.completions.create(**kw)
    assert r.choices[0].text == written[: written.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_suffix_too_long_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="m", prompt="x", suffix="y = 1\n" * 400, max_tokens=4)


def test_code_model_cannot_chat_over_the_api(loaded):
    code = dataclasses.replace(loaded, info={**loaded.info, "kind": "code"})
    with LiveServer(create_app(code, ServeLimits(max_batch=2, max_queue=2))) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=30)
        with pytest.raises(openai.BadRequestError, match="code model"):
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        r = c.completions.create(model="m", prompt="x = ", suffix="\n", max_tokens=3)
        assert r.choices[0].finish_reason in ("stop", "length")
