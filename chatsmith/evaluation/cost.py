"""What serving a model costs: measured throughput turned into money, and the roofline floor.

Pure arithmetic (no torch, no clock), so that it can be checked on made-up measurements.

The machine is rented by the hour and a query occupies it for as long as the engine spends on
it: its prompt's share of prefill time plus its reply's share of the batched decode steps,

    engine seconds per query = prompt / prefill tokens/s + reply / decode tokens/s (at batch b)

where decode tokens/s counts every sequence of the batch. Price per second times that is the
cost of a query. Larger batches share each decode step among more sequences, so they are
cheaper per token but each sequence waits longer per token; a latency target picks the
cheapest batch that still meets it.

The floor is the roofline: a step can go no faster than its arithmetic at the device's peak
FLOP/s, nor than reading its weights and KV cache at the peak memory bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

# Forward-pass FLOPs: 2 per weight multiplied per token (Kaplan et al. 2020, "Scaling Laws for
# Neural Language Models", table 1), plus 2 x 2 x layers x width x context for the attention
# scores and the weighted sum of values.
FLOPS_PER_WEIGHT = 2
ATTENTION_FLOPS = 4


@dataclass(frozen=True)
class DevicePeak:
    name: str
    tflops: float  # dense peak, the precision the model runs in (bf16 on GPUs, fp32 on CPUs)
    mem_gbps: float  # peak memory bandwidth, GB/s (10^9 bytes)
    source: str  # a datasheet, the user, or how the figure was estimated

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "peak_tflops": self.tflops,
            "mem_gbps": self.mem_gbps,
            "source": self.source,
        }


# Dense (not 2:4 sparse) bf16 tensor-core peaks and HBM/GDDR bandwidths from NVIDIA's
# datasheets: H200 (nvidia.com/en-us/data-center/h200: 989 TFLOPS bf16 dense = half the
# 1,979 sparse figure, 4.8 TB/s), H100 SXM and PCIe (nvidia.com/en-us/data-center/h100:
# 989 / 756 TFLOPS, 3.35 / 2.0 TB/s), A100 80GB SXM and 40GB PCIe (A100 datasheet: 312 TFLOPS,
# 2,039 / 1,555 GB/s), A10 (A10 datasheet: 125 TFLOPS, 600 GB/s), L4 (L4 datasheet: 121
# TFLOPS, 300 GB/s), T4 (T4 datasheet: 65 TFLOPS fp16, 320 GB/s).
# Matched against torch.cuda.get_device_name(), first match wins (so "H100 PCIe" precedes "H100").
KNOWN_DEVICES: tuple[tuple[str, DevicePeak], ...] = tuple(
    (key, DevicePeak(name, tf, bw, "NVIDIA datasheet"))
    for key, name, tf, bw in (
        ("h200", "NVIDIA H200", 989.0, 4800.0),
        ("h100 pcie", "NVIDIA H100 PCIe", 756.0, 2000.0),
        ("h100", "NVIDIA H100 SXM", 989.0, 3350.0),
        ("a100-sxm4-80gb", "NVIDIA A100 80GB SXM", 312.0, 2039.0),
        ("a100", "NVIDIA A100 40GB PCIe", 312.0, 1555.0),
        ("a10", "NVIDIA A10", 125.0, 600.0),
        ("l4", "NVIDIA L4", 121.0, 300.0),
        ("t4", "NVIDIA T4", 65.0, 320.0),
    )
)


def lookup_device(device_name: str) -> DevicePeak | None:
    """The datasheet peaks of a known accelerator, by (part of) its reported name."""
    name = device_name.lower()
    for key, peak in KNOWN_DEVICES:
        if key in name:
            return peak
    return None


@dataclass(frozen=True)
class ModelShape:
    """What the roofline needs from a model card."""

    matmul_params: int  # weights multiplied per token (a tied embedding counts once, as the head)
    weight_bytes: int  # every weight, read once per forward pass
    n_layer: int
    d_model: int
    kv_bytes_per_token: int  # keys and values of one token, all layers, at the cache's dtype

    def flops_per_token(self, context: float) -> float:
        """Forward FLOPs for one token that attends to `context` keys."""
        return (
            FLOPS_PER_WEIGHT * self.matmul_params
            + ATTENTION_FLOPS * self.n_layer * self.d_model * context
        )


@dataclass(frozen=True)
class Floor:
    seconds: float
    bound: str  # "compute" or "memory": whichever limit the step hits first

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "bound": self.bound}


def _floor(flops: float, nbytes: float, peak: DevicePeak) -> Floor:
    compute = flops / (peak.tflops * 1e12)
    memory = nbytes / (peak.mem_gbps * 1e9)
    return Floor(max(compute, memory), "compute" if compute >= memory else "memory")


def decode_floor(shape: ModelShape, peak: DevicePeak, batch: int, context: float) -> Floor:
    """Fastest possible decode step for `batch` sequences that each attend to `context` keys:
    every weight is read once for the whole batch, every sequence reads its own KV cache."""
    flops = batch * shape.flops_per_token(context)
    nbytes = shape.weight_bytes + batch * context * shape.kv_bytes_per_token
    return _floor(flops, nbytes, peak)


def prefill_floor(shape: ModelShape, peak: DevicePeak, batch: int, prompt: int) -> Floor:
    """Fastest possible prefill of `batch` prompts of `prompt` tokens (token i attends to i+1
    keys, so the mean context is about half the prompt)."""
    flops = batch * prompt * shape.flops_per_token((prompt + 1) / 2)
    nbytes = shape.weight_bytes + batch * prompt * shape.kv_bytes_per_token
    return _floor(flops, nbytes, peak)


@dataclass(frozen=True)
class Point:
    """Throughput measured at one batch size."""

    batch: int
    prefill_tokens_per_s: float  # prompt tokens processed per second (all sequences)
    decode_tokens_per_s: float  # new tokens per second (all sequences of the batch)

    @property
    def token_latency_s(self) -> float:
        """Seconds between two tokens of one sequence: one decode step."""
        return self.batch / self.decode_tokens_per_s


def engine_seconds(point: Point, prompt_tokens: int, reply_tokens: int) -> float:
    """Machine time one query of this shape takes when it shares the batch with others."""
    return prompt_tokens / point.prefill_tokens_per_s + reply_tokens / point.decode_tokens_per_s


def served_tokens_per_s(point: Point, prompt_tokens: int, reply_tokens: int) -> float:
    """Reply tokens per second a server keeping `point.batch` such queries in flight delivers:
    prefill of arriving prompts interrupts decoding, so both count."""
    return reply_tokens / engine_seconds(point, prompt_tokens, reply_tokens)


def query_costs(point: Point, price_per_hour: float, prompt_tokens: int, reply_tokens: int) -> dict:
    per_s = price_per_hour / 3600
    return {
        "batch": point.batch,
        "per_1m_input_tokens": per_s * 1e6 / point.prefill_tokens_per_s,
        "per_1m_output_tokens": per_s * 1e6 / point.decode_tokens_per_s,
        "per_query": per_s * engine_seconds(point, prompt_tokens, reply_tokens),
        "token_latency_ms": 1000 * point.token_latency_s,
    }


def cost_report(
    points: list[Point],
    price_per_hour: float,
    query: tuple[int, int],
    latency_slo_s: float | None = None,
) -> dict:
    """Cost per 1M input/output tokens and per query at batch 1, at the cheapest batch, and
    (with a latency target) at the cheapest batch whose decode step meets it."""
    prompt, reply = query
    rows = [query_costs(p, price_per_hour, prompt, reply) for p in points]
    cheapest = min(rows, key=lambda r: r["per_query"])
    report = {
        "price_per_hour": price_per_hour,
        "query": {"prompt_tokens": prompt, "reply_tokens": reply},
        "by_batch": rows,
        "batch_1": next((r for r in rows if r["batch"] == 1), None),
        "cheapest": cheapest,
    }
    if latency_slo_s is not None:
        ok = [r for r in rows if r["token_latency_ms"] <= 1000 * latency_slo_s]
        report["latency_slo_ms"] = 1000 * latency_slo_s
        report["cheapest_within_slo"] = min(ok, key=lambda r: r["per_query"]) if ok else None
    return report
