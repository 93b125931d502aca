"""The inference engine: batching is invisible to each sequence; the static decode step agrees."""

from __future__ import annotations

import pytest
import torch

from chatsmith.errors import ChatsmithError
from chatsmith.inference.engine import ContextOverflow, Engine, EngineFull, SamplingParams
from chatsmith.inference.static_decode import StaticDecodeStep
from chatsmith.models import KVCache, ModelConfig, build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_kv_head=1, d_model=32, max_seq_len=48)
    return build_model(cfg).eval()


def prompts(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(2, 64, (3 + 2 * i,), generator=g).tolist() for i in range(n)]


def test_batched_generation_equals_one_at_a_time(model):
    params = SamplingParams(max_tokens=10, temperature=0.9, top_k=20, top_p=0.9, seed=5)
    alone = [Engine(model, stop_ids=[]).generate_many([p], params)[0].tokens for p in prompts(5)]
    engine = Engine(model, stop_ids=[], max_batch=3)  # 5 prompts through 3 slots
    together = [g.tokens for g in engine.generate_many(prompts(5), params)]
    assert together == alone
    assert engine.free and not engine.live  # every slot came back


def test_greedy_matches_full_recompute(model):
    prompt = prompts(1)[0]
    engine = Engine(model, stop_ids=[])
    out = list(engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0)))
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
    assert out == seq[len(prompt) :]


def test_stop_token_ends_the_reply_and_is_not_shown(model):
    prompt = prompts(1)[0]
    first = list(Engine(model, stop_ids=[]).generate(prompt, SamplingParams(8, temperature=0)))
    stop = first[3]
    engine = Engine(model, stop_ids=[stop])
    seq = engine.add(prompt, SamplingParams(8, temperature=0))
    while not seq.finished:
        engine.step()
    assert seq.tokens == first[: first.index(stop)] and seq.finish_reason == "stop"
    assert seq.stop_token == stop  # recorded: RL trains on the stop token it sampled
    unused = next(t for t in range(64) if t not in first)
    other = Engine(model, stop_ids=[unused]).generate_many([prompt], SamplingParams(8, 0.0))
    assert other[0].finish_reason == "length" and other[0].stop_token is None


def test_limits(model):
    engine = Engine(model, stop_ids=[], max_batch=1)
    with pytest.raises(ContextOverflow):
        engine.add(list(range(2, 50)), SamplingParams())
    with pytest.raises(ChatsmithError, match="top_p"):
        engine.add([2, 3], SamplingParams(top_p=0))
    seq = engine.add([2, 3], SamplingParams(max_tokens=100, temperature=0))
    with pytest.raises(EngineFull):
        engine.add([2, 3], SamplingParams())
    while not seq.finished:
        engine.step()
    assert seq.finish_reason == "length" and len(seq.prompt) + len(seq.tokens) == 48
    engine.add([2, 3], SamplingParams())  # the slot was freed


def test_static_decode_step_matches_per_row_decoding(model):
    """All-rows decoding (the CUDA-graph path) gives the same logits and cache lengths, also
    when it reads only the cache positions the live rows need."""
    cfg = model.cfg
    ref_cache = KVCache.for_model(cfg, 3, "cpu", torch.float32)
    cache = KVCache.for_model(cfg, 3, "cpu", torch.float32)
    static = StaticDecodeStep(model, cache, use_graph=False)
    with torch.no_grad():
        for slot, p in zip([0, 2], prompts(2)):  # slot 1 stays idle
            for c in (ref_cache, cache):
                model(torch.tensor([p]), cache=c, rows=torch.tensor([slot]))
        for token in (7, 9, 11):
            ref, _ = model(
                torch.tensor([[token], [token + 1]]),
                cache=ref_cache,
                rows=torch.tensor([0, 2]),
                last_only=True,
            )
            needed = int(ref_cache.lengths.max())
            for layer in (*cache.k, *cache.v):  # positions no live row holds: never read
                layer[:, needed:] = float("nan")
            got, greedy = static([0, 2], [token, token + 1], needed)
            for layer in (*cache.k, *cache.v):  # (a masked position inside the span is read)
                layer[:, needed:] = 0.0
            assert torch.allclose(got, ref[:, -1], atol=1e-5)
            assert greedy.tolist() == got.argmax(-1).tolist()
            assert cache.read_span is None  # read only the live part for this step, then reset
            assert cache.lengths.tolist() == [ref_cache.lengths[0], 0, ref_cache.lengths[2]]


@pytest.mark.slow  # compiling takes tens of seconds on a small CPU
def test_compiled_decode_step_greedy_equals_eager(model):
    """The compiled decode step (CPU here) gives the eager engine's greedy tokens, with
    sequences joining and leaving its slots, and leaves every slot free."""
    params = SamplingParams(max_tokens=20, temperature=0)
    compiled = Engine(model, stop_ids=[], max_batch=3, compile=True)
    eager = Engine(model, stop_ids=[], max_batch=3)
    assert compiled.static is not None and eager.static is None
    fast = [g.tokens for g in compiled.generate_many(prompts(5), params)]  # 5 through 3 slots
    assert fast == [g.tokens for g in eager.generate_many(prompts(5), params)]
    assert all(len(t) == 20 for t in fast) and len(compiled.free) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_decode_paths_greedy_equal_eager():
    """Recorded-and-replayed, and compiled inside the recording: nothing changes but speed."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_kv_head=1, d_model=32, max_seq_len=48)
    model = build_model(cfg).cuda().eval()
    params = SamplingParams(max_tokens=20, temperature=0)
    eager = Engine(model, stop_ids=[], max_batch=3, cuda_graph=False)
    expected = [g.tokens for g in eager.generate_many(prompts(5), params)]
    assert eager.static is None and all(len(t) == 20 for t in expected)
    for opts in ({"cuda_graph": True}, {"cuda_graph": True, "compile": True}, {"compile": True}):
        engine = Engine(model, stop_ids=[], max_batch=3, **opts)
        assert engine.static is not None
        assert (engine.static.graph is not None) == opts.get("cuda_graph", False)
        got = [g.tokens for g in engine.generate_many(prompts(5), params)]  # 5 through 3 slots
        assert got == expected, opts


def test_group_shares_one_prefill_and_gives_the_same_replies(model, monkeypatch):
    prompt = prompts(3)[2]
    group = [SamplingParams(max_tokens=10, temperature=1.0, seed=s) for s in range(4)]
    group.append(SamplingParams(max_tokens=10, temperature=0))  # greedy too
    alone = [Engine(model, stop_ids=[]).generate_many([prompt], p)[0].tokens for p in group]
    engine = Engine(model, stop_ids=[], max_batch=6)
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, **kw: calls.append(x.shape) or forward(x, **kw))
    seqs = engine.add_group(prompt, group)
    assert calls == [(1, len(prompt))]  # one prefill for the whole group
    while engine.live:
        engine.step()
    assert [s.tokens for s in seqs] == alone
    assert len({tuple(t) for t in alone[:4]}) > 1  # the seeds really differ
    assert sorted(engine.free) == list(range(6))
    with pytest.raises(EngineFull):
        Engine(model, stop_ids=[], max_batch=3).add_group(prompt, group)
