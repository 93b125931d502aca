"""`chatsmith bench`: serving speed measured through the real Engine, and what it costs.

For each batch size the engine prefills that many random prompts (the server's prefill
grouping) and decodes every sequence to the full length (no stop tokens, so the batch stays
full). Timed: prefill tokens/s, time to the first token of the batch, decode tokens/s, the
per-token latency (one decode step) and peak memory. The figures then go through
`evaluation.cost` for the price and the roofline floor.
"""

from __future__ import annotations

import re
import resource
import time
from dataclasses import asdict, dataclass

import torch

from chatsmith.errors import ChatsmithError
from chatsmith.evaluation import cost
from chatsmith.evaluation.hardware import device_peak
from chatsmith.inference.engine import Engine, SamplingParams
from chatsmith.inference.loading import LoadedRun

# most padded prompt tokens per prefill forward pass: the bound `chatsmith serve` uses
PREFILL_TOKENS = 2048
DEFAULT_BATCHES = (1, 4, 16, 64)


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ChatsmithError(f"--batch takes sizes like 1,4,16, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise ChatsmithError(f"--batch sizes must be at least 1, got {text!r}")
    return sorted(set(batches))


def parse_query(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m or int(m[2]) < 1:
        raise ChatsmithError(f"--query takes PROMPT:REPLY tokens like 500:300, got {text!r}")
    return int(m[1]), int(m[2])


def parse_latency(text: str) -> float:
    """'50ms', '0.05s' or '0.05' (seconds) -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", text)
    if not m or float(m[1]) <= 0:
        raise ChatsmithError(f"--latency-slo takes a time like 50ms or 0.05s, got {text!r}")
    return float(m[1]) / (1000 if m[2] == "ms" else 1)


@dataclass
class BenchConfig:
    batches: list[int]
    prompt_tokens: int | None = None  # None: 512, or what fits the context
    new_tokens: int | None = None  # None: 256, or what fits the context
    price_per_hour: float | None = None
    query: tuple[int, int] | None = None
    latency_slo_s: float | None = None
    peak_tflops: float | None = None
    mem_gbps: float | None = None
    seed: int = 0

    @classmethod
    def from_flags(
        cls,
        batch: str,
        prompt_tokens: int | None,
        new_tokens: int | None,
        price_per_hour: float | None,
        query: str | None,
        latency_slo: str | None,
        peak_tflops: float | None,
        mem_gbps: float | None,
    ) -> BenchConfig:
        """From the text forms on the command line: 1,4,16 for --batch, 500:300, 50ms."""
        return cls(
            batches=parse_batches(batch),
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            price_per_hour=price_per_hour,
            query=parse_query(query) if query is not None else None,
            latency_slo_s=parse_latency(latency_slo) if latency_slo is not None else None,
            peak_tflops=peak_tflops,
            mem_gbps=mem_gbps,
        )

    def resolve(self, context: int) -> BenchConfig:
        """Fill in default lengths that fit `context`; reject settings that cannot work."""
        prompt = self.prompt_tokens if self.prompt_tokens is not None else min(512, context // 2)
        new = self.new_tokens if self.new_tokens is not None else min(256, context // 4)
        if prompt < 1 or new < 2:
            raise ChatsmithError(
                "--prompt-tokens must be at least 1 and --new-tokens at least 2 "
                "(the first new token comes out of the prefill)"
            )
        if prompt + new > context:
            raise ChatsmithError(
                f"{prompt} prompt + {new} new tokens do not fit the model's {context}-token context"
            )
        if self.query is not None and sum(self.query) > context:
            raise ChatsmithError(
                f"--query {self.query[0]}:{self.query[1]} is longer than the model's "
                f"{context}-token context"
            )
        if self.price_per_hour is None and (self.query or self.latency_slo_s):
            raise ChatsmithError("--query and --latency-slo price queries: give --price-per-hour")
        if self.price_per_hour is not None and self.price_per_hour <= 0:
            raise ChatsmithError(f"--price-per-hour must be positive, got {self.price_per_hour}")
        for name, v in (("--peak-tflops", self.peak_tflops), ("--mem-gbps", self.mem_gbps)):
            if v is not None and v <= 0:
                raise ChatsmithError(f"{name} must be positive, got {v}")
        return BenchConfig(**{**asdict(self), "prompt_tokens": prompt, "new_tokens": new})


def model_shape(run: LoadedRun) -> cost.ModelShape:
    model, cfg = run.model, run.cfg
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    n_embed = cfg.vocab_size * cfg.d_model
    # an untied embedding table is looked up, not multiplied; a tied one is the LM head
    matmul = n if cfg.tie_embeddings else n - n_embed
    size = params[0].element_size()
    return cost.ModelShape(
        matmul_params=matmul,
        weight_bytes=sum(p.numel() * p.element_size() for p in params),
        n_layer=cfg.n_layer,
        d_model=cfg.d_model,
        kv_bytes_per_token=2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * size,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA memory allocated by PyTorch"
    # Linux reports kilobytes; this includes the Python runtime and is never reset
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def measure_batch(
    run: LoadedRun, batch: int, prompt_tokens: int, new_tokens: int, seed: int, tick=None
) -> dict:
    """Prefill `batch` random prompts and decode them all `new_tokens` long; time each phase."""
    device = next(run.model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    engine = Engine(run.model, stop_ids=[], max_batch=batch, cuda_graph=True)
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, run.cfg.vocab_size, (batch, prompt_tokens), generator=g).tolist()
    params = [
        SamplingParams(max_tokens=new_tokens, temperature=1.0, seed=seed + i) for i in range(batch)
    ]
    group = max(1, PREFILL_TOKENS // prompt_tokens)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, batch, group):
        engine.add_many(prompts[i : i + group], params[i : i + group])
    _sync(device)
    t_prefill = time.perf_counter()
    engine.step()  # samples every first token from the prefill's logits
    t_first = time.perf_counter()
    steps = 0
    while engine.live:
        engine.step()
        steps += 1
        if tick is not None:
            tick(1)
    t_end = time.perf_counter()
    decode_s = t_end - t_first
    mem, mem_source = _peak_memory(device)
    return {
        "batch": batch,
        "prefill_tokens_per_s": batch * prompt_tokens / (t_prefill - t0),
        "ttft_ms": 1000 * (t_first - t0),
        "decode_tokens_per_s": batch * steps / decode_s if steps else float("nan"),
        "token_latency_ms": 1000 * decode_s / steps if steps else float("nan"),
        "per_sequence_tokens_per_s": steps / decode_s if steps else float("nan"),
        "peak_memory_bytes": mem,
        "peak_memory_source": mem_source,
        "kv_cache_bytes": engine.cache.nbytes(),
    }


def run_bench(run: LoadedRun, cfg: BenchConfig, progress: bool = True) -> dict:
    """Measure every batch size and build the report (the JSON written beside the plot)."""
    from tqdm import tqdm

    cfg = cfg.resolve(run.cfg.max_seq_len)
    device = next(run.model.parameters()).device
    peak = device_peak(device, cfg.peak_tflops, cfg.mem_gbps)  # None: no floor reported
    shape = model_shape(run)
    measure_batch(run, 1, min(8, cfg.prompt_tokens), 4, cfg.seed)  # warm-up: first-call costs
    bar = tqdm(
        total=sum(cfg.new_tokens - 1 for _ in cfg.batches),
        unit="step",
        desc="bench",
        disable=not progress,
        leave=False,
    )
    points = []
    with bar:
        for b in cfg.batches:
            bar.set_postfix(batch=b)
            points.append(
                measure_batch(run, b, cfg.prompt_tokens, cfg.new_tokens, cfg.seed, bar.update)
            )
    context = cfg.prompt_tokens + cfg.new_tokens / 2  # mean keys per decode step
    for p in points:
        if peak is None:
            continue
        step = cost.decode_floor(shape, peak, p["batch"], context)
        pre = cost.prefill_floor(shape, peak, p["batch"], cfg.prompt_tokens)
        p["floor"] = {
            "decode_tokens_per_s": p["batch"] / step.seconds,
            "decode_bound": step.bound,
            "prefill_tokens_per_s": p["batch"] * cfg.prompt_tokens / pre.seconds,
            "prefill_bound": pre.bound,
        }
        p["floor"]["decode_fraction"] = p["decode_tokens_per_s"] / p["floor"]["decode_tokens_per_s"]
        p["floor"]["prefill_fraction"] = (
            p["prefill_tokens_per_s"] / p["floor"]["prefill_tokens_per_s"]
        )
    report = {
        "run": str(run.path),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": str(device),
        "device_peak": None if peak is None else peak.to_dict(),
        "torch_threads": torch.get_num_threads(),
        "model": {
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "layers": run.cfg.n_layer,
            "width": run.cfg.d_model,
            "context": run.cfg.max_seq_len,
            "dtype": str(next(run.model.parameters()).dtype).replace("torch.", ""),
            "forward_flops_per_token": shape.flops_per_token(context),
            "weight_bytes": shape.weight_bytes,
            "kv_cache_bytes_per_token": shape.kv_bytes_per_token,
        },
        "prompt_tokens": cfg.prompt_tokens,
        "new_tokens": cfg.new_tokens,
        "points": points,
        "cost": None,
    }
    if cfg.price_per_hour is not None:
        query = cfg.query or (cfg.prompt_tokens, cfg.new_tokens)
        measured = [
            cost.Point(p["batch"], p["prefill_tokens_per_s"], p["decode_tokens_per_s"])
            for p in points
        ]
        report["cost"] = cost.cost_report(measured, cfg.price_per_hour, query, cfg.latency_slo_s)
    return report
