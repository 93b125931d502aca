"""The engine's batched sampler, which the server's continuous batching relies on."""

from __future__ import annotations

import torch

from chatsmith.inference.engine import SamplingParams, sample_tokens


def reference_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The filtered distribution over a (V,) row, by plain full-sort code."""
    logits = logits.float() / params.temperature
    if params.top_k is not None and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(0) - sorted_p >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return probs / probs.sum()


def sample_token(  # the plain one-row reference the batched sampler must match
    logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None
) -> int:
    """One token id from a (V,) row of logits: greedy at temperature 0, else filtered sampling."""
    if params.temperature == 0:
        return int(logits.argmax())
    return int(torch.multinomial(reference_probs(logits, params), 1, generator=gen))


def test_greedy_rows_pick_the_argmax():
    logits = torch.randn(5, 40)
    params = [SamplingParams(temperature=0)] * 5
    assert sample_tokens(logits, params, [None] * 5) == logits.argmax(-1).tolist()


def test_filters_match_the_single_row_sampler():
    torch.manual_seed(0)
    row = torch.randn(30) * 2
    n = 4000
    for p in (
        SamplingParams(temperature=0.7),
        SamplingParams(top_k=4),
        SamplingParams(top_p=0.6),
        SamplingParams(temperature=1.5, top_k=8, top_p=0.9),
    ):
        batched = torch.tensor(sample_tokens(row.expand(n, 30), [p] * n, [None] * n))
        single = torch.tensor([sample_token(row, p, None) for _ in range(n)])
        a = torch.bincount(batched, minlength=30).float() / n
        b = torch.bincount(single, minlength=30).float() / n
        assert (a - b).abs().max() < 0.05  # same distribution (sampling noise allowed)


def test_wide_vocabulary_filters_match_the_reference_distribution():
    """Past 64 candidates: a top-k wider than 64, and top-p nuclei that need more than the 64
    likeliest (a flat row) beside one that does not (a peaked row), in one batch."""
    torch.manual_seed(3)
    vocab, n = 400, 3000
    flat, peaked = torch.randn(vocab) * 0.3, torch.randn(vocab) * 6
    for p in (
        SamplingParams(top_p=0.5),
        SamplingParams(top_k=100),
        SamplingParams(temperature=0.9, top_k=300, top_p=0.7),
    ):
        for row, other in ((flat, peaked), (peaked, flat)):
            rows = torch.stack([row, other]).repeat(n, 1)
            picks = torch.tensor(sample_tokens(rows, [p] * 2 * n, [None] * 2 * n))[0::2]
            want = reference_probs(row, p)
            assert bool((want[picks] > 0).all()), p  # only tokens the filters keep
            # 8 groups of tokens of ~equal wanted mass, likeliest first: each drawn ~1/8
            order = want.argsort(descending=True)
            group = torch.empty(vocab, dtype=torch.long)
            group[order] = (want[order].cumsum(0) * 8 - 1e-6).clamp(0, 7).long()
            mass = torch.zeros(8).index_add_(0, group, want)
            drawn = torch.bincount(group[picks], minlength=8).float() / n
            assert (drawn - mass).abs().max() < 0.04, (p, drawn, mass)


def test_every_filtered_row_draws_one_number_from_its_generator():
    """A seeded row advances its generator by exactly one draw per token, whether its nucleus
    lies among the first candidates ranked (peaked) or needs the wide path (flat)."""
    torch.manual_seed(4)
    flat, peaked = torch.randn(400) * 0.3, torch.randn(400) * 6
    for row in (flat, peaked):
        gen = torch.Generator().manual_seed(5)
        sample_tokens(row[None], [SamplingParams(top_p=0.9, seed=5)], [gen])
        ref = torch.Generator().manual_seed(5)
        torch.rand(1, generator=ref)
        assert torch.rand(1, generator=gen).item() == torch.rand(1, generator=ref).item()


def test_mixed_rows_and_seeds_do_not_depend_on_neighbours():
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    params = [SamplingParams(seed=7), SamplingParams(temperature=0), SamplingParams(top_p=0.5)]

    def draw(rows):
        gens = [torch.Generator().manual_seed(7) if i == 0 else None for i in rows]
        return sample_tokens(logits[rows], [params[i] for i in rows], gens)

    alone = [draw([0])[0] for _ in range(3)]
    together = draw([0, 1, 2])
    assert alone == [alone[0]] * 3 and together[0] == alone[0]
    assert together[1] == int(logits[1].argmax())


def test_add_many_prefills_like_add(tiny_run):
    from chatsmith.inference.engine import Engine
    from chatsmith.inference.loading import load_run

    model = load_run(tiny_run, "cpu").model
    prompts = [[0, 5, 9, 100, 7], [0, 3], [0, 8, 8, 8, 8, 8, 8, 8, 30, 31]]

    def params():
        return [SamplingParams(max_tokens=12, temperature=1.0, seed=i) for i in range(3)]

    one = Engine(model, stop_ids=[], max_batch=4)
    singles = [one.add(p, sp) for p, sp in zip(prompts, params())]
    first = [s._next_logits.clone() for s in singles]
    while one.live:
        one.step()
    many = Engine(model, stop_ids=[], max_batch=4)
    batched = many.add_many(prompts, params())
    for a, s in zip(first, batched):
        assert torch.allclose(a, s._next_logits, atol=1e-4)
    while many.live:
        many.step()
    assert [s.tokens for s in batched] == [s.tokens for s in singles]
    assert len(many.free) == 4


def test_tiny_temperature_and_top_p_behave_as_greedy():
    """Values that underflow (1e-45 is a float32 subnormal, 1e-300 rounds to 0) are their limit:
    only the likeliest token, never a NaN path that picks the last id or an unlikely token."""
    torch.manual_seed(2)
    logits = torch.randn(6, 40) * 3
    greedy = logits.argmax(-1).tolist()
    for p in (
        SamplingParams(temperature=1e-45),
        SamplingParams(temperature=1e-300),
        SamplingParams(top_p=1e-300),
        SamplingParams(temperature=1e-45, top_k=5),
        SamplingParams(temperature=1e-45, top_p=1e-300, top_k=3),
        SamplingParams(temperature=0.7, top_p=1e-300, seed=3),
    ):
        gens = [None if p.seed is None else torch.Generator().manual_seed(p.seed)] * 6
        assert sample_tokens(logits, [p] * 6, gens) == greedy, p
