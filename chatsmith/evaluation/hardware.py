"""Peak FLOP/s and memory bandwidth of the device a benchmark runs on.

A known GPU's figures come from its datasheet (`cost.KNOWN_DEVICES`); a CPU's are estimated
here and labelled as such; the user can give either figure instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from chatsmith.errors import ChatsmithError
from chatsmith.evaluation import cost


def cpu_peak(threads: int) -> cost.DevicePeak:
    """An estimate for a CPU: threads x clock x fp32 FLOPs per cycle from the vector units
    (2 FMA units x 8 lanes x 2 with AVX2, 16 lanes with AVX-512; an upper figure, since some
    cores, AMD Zen 4 for one, run 512-bit vectors in two halves), and the bandwidth of a large
    tensor copy measured now (below the true peak, and lower still on a busy machine)."""
    flags, mhz = set(), 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags = set(value.split())
            elif key.strip() == "cpu MHz":
                mhz = max(mhz, float(value))
    except OSError:
        pass
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    ghz = mhz / 1000 if mhz else 2.5
    a = torch.empty(32 * 2**20)  # 128 MB: far larger than any cache
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t0)
    gbps = 2 * a.numel() * a.element_size() / best / 1e9  # read + write
    return cost.DevicePeak(
        "CPU",
        threads * ghz * per_cycle / 1000,
        round(gbps, 1),
        f"estimate: {threads} threads x {ghz:.2f} GHz x {per_cycle} fp32 FLOPs/cycle; "
        "bandwidth of a 128 MB copy measured now",
    )


def device_peak(
    device: torch.device, peak_tflops: float | None = None, mem_gbps: float | None = None
) -> cost.DevicePeak | None:
    """User-given peaks win; else a known accelerator's datasheet; else (CPU) an estimate.
    None for an accelerator that is neither known nor described."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = cost.lookup_device(name)
    else:
        name, found = device.type.upper(), None
    if found is None and device.type == "cpu":
        found = cpu_peak(torch.get_num_threads())
    if peak_tflops is not None or mem_gbps is not None:
        if found is None and (peak_tflops is None or mem_gbps is None):
            raise ChatsmithError(
                f"{name} is not a known device: give both --peak-tflops and --mem-gbps"
            )
        return cost.DevicePeak(
            name,
            peak_tflops if peak_tflops is not None else found.tflops,
            mem_gbps if mem_gbps is not None else found.mem_gbps,
            "given by the user" + ("" if found is None else f" (rest: {found.source})"),
        )
    return found
