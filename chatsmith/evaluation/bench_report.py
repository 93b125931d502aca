"""The outputs of `chatsmith bench`: a JSON file, a PNG beside it, and a short text summary."""

from __future__ import annotations

from pathlib import Path

from chatsmith.evaluation.figures import pyplot, save_png
from chatsmith.files import write_json_atomic


def write_outputs(report: dict, png: Path) -> tuple[Path | None, Path]:
    """Write the JSON report beside `png` (same name, .json); the PNG only if matplotlib is
    installed (the `plot` extra). Returns (png or None, json)."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    json_path = png.with_suffix(".json")
    write_json_atomic(json_path, report)
    return (png if plot(report, png) else None), json_path


def plot(report: dict, out: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    pts = report["points"]
    batches = [p["batch"] for p in pts]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(batches, [p["decode_tokens_per_s"] for p in pts], marker="o", label="decode")
    left.plot(batches, [p["prefill_tokens_per_s"] for p in pts], marker="s", label="prefill")
    if all("floor" in p for p in pts):
        left.plot(
            batches,
            [p["floor"]["decode_tokens_per_s"] for p in pts],
            linestyle="--",
            color="gray",
            label="decode floor (roofline)",
        )
    left.set_ylabel("tokens/s (all sequences)")
    left.set_title("throughput")
    right.plot(batches, [p["token_latency_ms"] for p in pts], marker="o", label="per token")
    right.plot(batches, [p["ttft_ms"] for p in pts], marker="s", label="first token")
    right.set_ylabel("ms")
    right.set_title("latency")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(
        f"{Path(report['run']).name} on {report['device']}: "
        f"{report['prompt_tokens']} prompt + {report['new_tokens']} new tokens"
    )
    fig.tight_layout()
    save_png(fig, out, dpi=110)
    return True


def summary(report: dict) -> list[str]:
    """Lines for the terminal: one per batch size, then the cost figures."""
    peak = report["device_peak"]
    lines = [
        f"{Path(report['run']).name} on {report['device']} ({report['torch_threads']} threads), "
        f"{report['prompt_tokens']} prompt + {report['new_tokens']} new tokens per sequence"
    ]
    if peak:
        lines.append(
            f"device peak: {peak['peak_tflops']:.3g} TFLOP/s, {peak['mem_gbps']:.4g} GB/s "
            f"({peak['source']})"
        )
    lines.append(
        "batch  prefill tok/s  decode tok/s  per-seq tok/s  TTFT ms  token ms  floor tok/s (of)"
    )
    for p in report["points"]:
        floor = p.get("floor")
        of = (
            f"{floor['decode_tokens_per_s']:>11,.0f} ({100 * floor['decode_fraction']:.1f}%, "
            f"{floor['decode_bound']})"
            if floor
            else "-"
        )
        lines.append(
            f"{p['batch']:>5}  {p['prefill_tokens_per_s']:>13,.0f}  "
            f"{p['decode_tokens_per_s']:>12,.1f}  {p['per_sequence_tokens_per_s']:>13,.1f}  "
            f"{p['ttft_ms']:>7,.1f}  {p['token_latency_ms']:>8,.2f}  {of}"
        )
    c = report["cost"]
    if c:
        q = c["query"]
        lines.append(
            f"cost at {c['price_per_hour']:g}/hour, query {q['prompt_tokens']}:{q['reply_tokens']}:"
        )
        picks = [("at batch 1", c["batch_1"]), ("cheapest", c["cheapest"])]
        if "latency_slo_ms" in c:
            picks.append(
                (f"cheapest within {c['latency_slo_ms']:g} ms/token", c["cheapest_within_slo"])
            )
        for label, r in picks:
            if r is None:
                lines.append(f"  {label}: no measured batch size qualifies")
                continue
            where = "" if label == "at batch 1" else f" (batch {r['batch']})"
            lines.append(
                f"  {label}{where}: {r['per_1m_input_tokens']:.4g} per 1M input, "
                f"{r['per_1m_output_tokens']:.4g} per 1M output, {r['per_query']:.4g} per query "
                f"({r['token_latency_ms']:.2f} ms/token)"
            )
    return lines
