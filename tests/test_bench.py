"""`chatsmith bench`: cost arithmetic on made-up figures, the measured report, one-line errors."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli
from test_cli import assert_clean_error

from chatsmith.errors import ChatsmithError
from chatsmith.evaluation import cost
from chatsmith.evaluation.bench import BenchConfig, parse_latency, parse_query, run_bench
from chatsmith.evaluation.bench_report import summary, write_outputs
from chatsmith.inference.loading import load_run

# made up: prefill gets faster with batch, decode throughput grows and so does latency
POINTS = [
    cost.Point(batch=1, prefill_tokens_per_s=1000.0, decode_tokens_per_s=50.0),  # 20 ms/token
    cost.Point(batch=8, prefill_tokens_per_s=4000.0, decode_tokens_per_s=320.0),  # 25 ms/token
    cost.Point(batch=32, prefill_tokens_per_s=4000.0, decode_tokens_per_s=640.0),  # 50 ms/token
]


def test_cost_of_tokens_and_queries_on_a_made_up_measurement():
    # 3.6 per hour is 0.001 per second
    report = cost.cost_report(POINTS, price_per_hour=3.6, query=(500, 300))
    one = report["batch_1"]
    assert one["per_1m_output_tokens"] == pytest.approx(0.001 * 1e6 / 50)  # 20.0
    assert one["per_1m_input_tokens"] == pytest.approx(0.001 * 1e6 / 1000)  # 1.0
    assert one["per_query"] == pytest.approx(0.001 * (500 / 1000 + 300 / 50))  # 0.0065
    best = report["cheapest"]
    assert best["batch"] == 32
    assert best["per_query"] == pytest.approx(0.001 * (500 / 4000 + 300 / 640))
    assert best["token_latency_ms"] == pytest.approx(50.0)
    assert [r["batch"] for r in report["by_batch"]] == [1, 8, 32]
    assert "cheapest_within_slo" not in report


def test_latency_target_picks_the_cheapest_batch_that_meets_it():
    within = cost.cost_report(POINTS, 3.6, (500, 300), latency_slo_s=0.030)
    assert within["cheapest_within_slo"]["batch"] == 8  # 25 ms; batch 32 takes 50 ms
    assert within["latency_slo_ms"] == pytest.approx(30.0)
    none = cost.cost_report(POINTS, 3.6, (500, 300), latency_slo_s=0.010)
    assert none["cheapest_within_slo"] is None  # even batch 1 takes 20 ms per token


def test_served_throughput_counts_prefill_and_decode():
    p = POINTS[1]  # 8 sequences: 0.125 s of prefill + 300/320 s of decode per query
    assert cost.engine_seconds(p, 500, 300) == pytest.approx(0.125 + 0.9375)
    assert cost.served_tokens_per_s(p, 500, 300) == pytest.approx(300 / 1.0625)


def test_roofline_floor_is_compute_or_memory_bound():
    shape = cost.ModelShape(
        matmul_params=1_000_000,
        weight_bytes=4_000_000,
        n_layer=2,
        d_model=64,
        kv_bytes_per_token=512,
    )
    assert shape.flops_per_token(100) == 2_000_000 + 4 * 2 * 64 * 100
    fast_math = cost.DevicePeak("x", tflops=1.0, mem_gbps=10.0, source="test")
    step = cost.decode_floor(shape, fast_math, batch=1, context=100)
    assert step.bound == "memory"
    assert step.seconds == pytest.approx((4_000_000 + 100 * 512) / 10e9)
    slow_math = cost.DevicePeak("y", tflops=0.001, mem_gbps=10.0, source="test")
    step = cost.decode_floor(shape, slow_math, batch=4, context=100)
    assert step.bound == "compute"
    assert step.seconds == pytest.approx(4 * 2_051_200 / 1e9)
    pre = cost.prefill_floor(shape, slow_math, batch=2, prompt=9)
    assert pre.seconds == pytest.approx(2 * 9 * shape.flops_per_token(5) / 1e9)


def test_known_devices_by_reported_name():
    assert cost.lookup_device("NVIDIA H100 80GB HBM3").tflops == 989.0
    assert cost.lookup_device("NVIDIA H100 PCIe").mem_gbps == 2000.0
    assert cost.lookup_device("NVIDIA H200").mem_gbps == 4800.0
    assert cost.lookup_device("Tesla T4").tflops == 65.0
    assert cost.lookup_device("Some Future Chip") is None


def test_parsing_of_query_and_latency():
    assert parse_query("500:300") == (500, 300)
    assert parse_latency("50ms") == pytest.approx(0.05)
    assert parse_latency("0.2s") == pytest.approx(0.2)
    for bad in ("500", "a:b", "5:0"):
        with pytest.raises(ChatsmithError, match="--query"):
            parse_query(bad)
    with pytest.raises(ChatsmithError, match="--latency-slo"):
        parse_latency("fast")


POINT_FIELDS = {
    "batch",
    "prefill_tokens_per_s",
    "ttft_ms",
    "decode_tokens_per_s",
    "token_latency_ms",
    "per_sequence_tokens_per_s",
    "peak_memory_bytes",
    "peak_memory_source",
    "kv_cache_bytes",
    "floor",
}


def test_bench_report_has_every_field(tiny_run, tmp_path, one_thread):
    run = load_run(tiny_run, "cpu")
    cfg = BenchConfig(
        batches=[1, 3],
        prompt_tokens=6,
        new_tokens=5,
        price_per_hour=2.5,
        query=(20, 10),
        latency_slo_s=10.0,
    )
    report = run_bench(run, cfg, progress=False)
    assert report["prompt_tokens"] == 6 and report["new_tokens"] == 5
    assert report["device"] == "cpu" and report["device_peak"]["source"].startswith("estimate")
    assert {"parameters", "forward_flops_per_token", "weight_bytes"} <= set(report["model"])
    assert [p["batch"] for p in report["points"]] == [1, 3]
    for p in report["points"]:
        assert set(p) == POINT_FIELDS
        # 4 decode steps after the prefill's token: figures agree with one another
        assert p["decode_tokens_per_s"] == pytest.approx(p["batch"] * 1000 / p["token_latency_ms"])
        assert p["per_sequence_tokens_per_s"] == pytest.approx(
            p["decode_tokens_per_s"] / p["batch"]
        )
        assert p["kv_cache_bytes"] == 2 * 2 * p["batch"] * 64 * 64 * 4  # k+v, 2 layers, fp32
        assert 0 < p["floor"]["decode_fraction"] < 1  # nothing beats the roofline
        assert all(math.isfinite(v) and v > 0 for k, v in p.items() if k.endswith("_per_s"))
    c = report["cost"]
    assert c["query"] == {"prompt_tokens": 20, "reply_tokens": 10}
    assert c["cheapest"]["per_query"] <= c["batch_1"]["per_query"]
    assert c["cheapest_within_slo"] is not None
    png, js = write_outputs(report, tmp_path / "out" / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(js.read_text()) == json.loads(json.dumps(report))
    text = "\n".join(summary(report))
    assert "per 1M output" in text and "batch 1" in text


@pytest.mark.parametrize(
    "cfg, fragment",
    [
        (BenchConfig([1], query=(10, 5)), "give --price-per-hour"),
        (BenchConfig([1], prompt_tokens=50, new_tokens=20), "do not fit the model's 64-token"),
        (BenchConfig([1], new_tokens=1), "--new-tokens at least 2"),
        (BenchConfig([1], price_per_hour=-1.0), "--price-per-hour must be positive"),
    ],
)
def test_impossible_bench_settings(cfg, fragment):
    with pytest.raises(ChatsmithError, match=fragment):
        cfg.resolve(context=64)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--batch", "0"], "--batch sizes must be at least 1"),
        (["--price-per-hour", "1", "--query", "40:30"], "longer than the model's 64-token"),
    ],
)
def test_bad_bench_input_is_one_error_line(tiny_run, args, fragment):
    proc = run_cli("bench", str(tiny_run), "--device", "cpu", *args, timeout=120)
    assert_clean_error(proc, fragment)
