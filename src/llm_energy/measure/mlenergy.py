"""ML.ENERGY's rules, by name: the steady-state window of their benchmark's `RequestTracker`,
their average batch size, and their validator's per-run checks with their thresholds.

Read from ml-energy/benchmark at commit c1d6557fbf7c7c495749b0fcf649f71774eabde9 (2026-05-09)
and implemented here from that reading (docs/methodology.md gives the details):

- `mlenergy/benchmark/llm/benchmark.py`: class `RequestTracker` and `benchmark()` (window);
- `mlenergy/benchmark/llm/prometheus.py`: `calculate_steady_state_stats` (average batch);
- `scripts/validate_results.py`: the `check_*` functions (per-run checks).

Their "run" is one benchmark of N requests; here it is one cycle. The leaderboard's stability
rule (ml-energy/data) is applied where the leaderboard export is built (`analysis.export`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llm_energy.backends.base import RequestRecord
from llm_energy.measure.metrics import SteadyState, running_interval

BENCHMARK_REPOSITORY = "ml-energy/benchmark"
BENCHMARK_COMMIT = "c1d6557fbf7c7c495749b0fcf649f71774eabde9"

#: check_steady_state_duration: a steady state shorter than this is an error.
MIN_STEADY_STATE_S = 30.0
#: check_batch_size_saturation: average batch / max_num_seqs below this is a warning.
MIN_BATCH_SATURATION = 0.8
#: check_metrics_validity: steady-state energy per token above this (J) is an error.
MAX_ENERGY_PER_TOKEN_J = 100.0
#: check_temperature_range: GPU readings outside [20, 95] degC; an error when >= 5% of them are.
TEMPERATURE_RANGE_C = (20.0, 95.0)
MAX_TEMPERATURE_OUT_OF_RANGE = 0.05
#: check_power_range (GPU_TDP_MAP, device_average bounds): every reading in [70 W, 1.1 x TDP],
#: else a warning. Their map is keyed by the SKU they benchmark (H100/H200 SXM, B200).
GPU_TDP_W = {"H100": 700.0, "H200": 700.0, "B200": 1000.0}
POWER_MIN_W = 70.0
POWER_MAX_TDP_MULTIPLE = 1.1
#: check_output_length_saturation: this share of outputs at the length cap is a warning.
MAX_LENGTH_CAP_SHARE = 0.3


def tracker_window(records: Sequence[RequestRecord], max_num_seqs: int,
                   dispatch_end_s: float | None = None) -> SteadyState | None:
    """The steady-state window by ML.ENERGY's `RequestTracker` rule.

    With N = len(records) requests and B = `max_num_seqs`, the tracker counts requests that
    have received their first token ("started") and requests that have finished (failed ones
    included). The window opens when B have started and closes when
    k = N − B − 1 have finished (`num_finished >= N − B − 1`, checked at each finish, so for
    N − B − 1 <= 0 it closes at the first finish). When the closing count comes first (or
    fewer than B ever start, e.g. N < B), the tracker opens the window at that same moment:
    the window is empty. Their benchmark waits for the opening only once every request has
    been dispatched, so the window cannot open before `dispatch_end_s` (the last request's
    release by the arrival process; None when all are released at once, as with their
    default infinite request rate).

    Times are the records' clock (seconds). A request without a finish time (failed before
    any token) is taken to finish after every timed one. Returns None for no requests or
    when fewer than k finish times are known. Raises ValueError for `max_num_seqs` < 1."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, not {max_num_seqs}")
    n = len(records)
    if n == 0:
        return None
    started = sorted(r.first_token_s for r in records if r.first_token_s is not None)
    finished = sorted(r.finish_s for r in records if r.finish_s is not None)
    k = max(n - max_num_seqs - 1, 1)
    if len(finished) < k:
        return None
    close = finished[k - 1]
    open_ = started[max_num_seqs - 1] if len(started) >= max_num_seqs else math.inf
    start = min(open_, close)
    if dispatch_end_s is not None:
        start = max(start, dispatch_end_s)
    return SteadyState(start, max(start, close))


def avg_batch_size(records: Iterable[RequestRecord], start_s: float, end_s: float) -> float | None:
    """Time average of the number of running requests over [start_s, end_s]: the continuous
    form of ML.ENERGY's average batch, the mean of vLLM's `vllm:num_requests_running` gauge
    (summed over engines) over its 1 s Prometheus scrapes inside the steady window
    (`calculate_steady_state_stats`). None for an empty window."""
    if not end_s > start_s:
        return None
    busy = 0.0
    for r in records:
        span = running_interval(r)
        if span is not None:
            busy += max(0.0, min(span[1], end_s) - max(span[0], start_s))
    return busy / (end_s - start_s)


@dataclass(frozen=True)
class Check:
    """One of ML.ENERGY's per-run checks that did not pass: `name` (their expectation, in
    snake case), `severity` (`error` or `warning`, theirs) and what was seen."""

    name: str
    severity: str
    message: str

    def warning(self) -> str:
        return f"ML.ENERGY check {self.name} ({self.severity}): {self.message}"


def gpu_tdp_w(device_name: str | None) -> float | None:
    """TDP from their map, for the SKUs it means (SXM H100/H200, B200); None otherwise."""
    if not device_name or any(tag in device_name for tag in ("PCIe", "NVL")):
        return None
    for sku, tdp in GPU_TDP_W.items():
        if sku in device_name.split() or f"{sku}-" in device_name:
            return tdp
    return None


def failed_checks(*, steady_duration_s: float | None, avg_batch: float | None, max_num_seqs: int,
                  steady_energy_per_token_j: float | None, output_tokens_per_s: float | None,
                  gpu_power_w: Sequence[float] = (), gpu_temperature_c: Sequence[float] = (),
                  device_name: str | None = None, output_lengths: Sequence[int] = (),
                  max_output_tokens: int | Sequence[int | None] | None = None,
                  failed_requests: int = 0) -> list[Check]:
    """ML.ENERGY's per-run checks (validate_results.py) that fail for one cycle.

    A check with nothing to judge is skipped, not failed: power and temperature without GPU
    samples (CPU cells), the power range for a GPU outside their TDP map, the output-length
    check when `max_output_tokens` is None (lengths forced by the workload, EOS ignored, so
    every output is at the cap by design), energy when it was not measured.
    `max_output_tokens` is one cap for all outputs or each output's own cap (natural output
    lengths with per-request caps)."""
    out: list[Check] = []
    if failed_requests:
        out.append(Check("request_success", "error", f"{failed_requests} request(s) failed"))
    if steady_duration_s is None or steady_duration_s < MIN_STEADY_STATE_S:
        shown = "none" if steady_duration_s is None else f"{steady_duration_s:.2f} s"
        out.append(Check("steady_state_duration", "error",
                         f"steady state {shown} < {MIN_STEADY_STATE_S:g} s"))
    if avg_batch is not None and max_num_seqs > 0 and avg_batch / max_num_seqs < MIN_BATCH_SATURATION:
        out.append(Check("batch_size_saturation", "warning",
                         f"average batch {avg_batch:.2f} is {avg_batch / max_num_seqs:.1%} of "
                         f"max_num_seqs={max_num_seqs} (< {MIN_BATCH_SATURATION:.0%})"))
    problems = []
    if output_tokens_per_s is not None and output_tokens_per_s <= 0:
        problems.append(f"throughput={output_tokens_per_s}")
    if steady_energy_per_token_j is not None:
        if steady_energy_per_token_j <= 0:
            problems.append(f"energy/tok={steady_energy_per_token_j}")
        elif steady_energy_per_token_j > MAX_ENERGY_PER_TOKEN_J:
            problems.append(f"energy/tok={steady_energy_per_token_j:.2f} "
                            f"(>{MAX_ENERGY_PER_TOKEN_J:g}J)")
    if problems:
        out.append(Check("metrics_valid", "error", "invalid metrics: " + ", ".join(problems)))
    tdp = gpu_tdp_w(device_name)
    if gpu_power_w and tdp is not None:
        high = POWER_MAX_TDP_MULTIPLE * tdp
        outside = [p for p in gpu_power_w if p < POWER_MIN_W or p > high]
        if outside:
            out.append(Check("power_range", "warning",
                             f"{len(outside)}/{len(gpu_power_w)} GPU power readings outside "
                             f"[{POWER_MIN_W:g}, {high:g}] W (TDP {tdp:g} W)"))
    if gpu_temperature_c:
        low, high = TEMPERATURE_RANGE_C
        outside = [t for t in gpu_temperature_c if t < low or t > high]
        share = len(outside) / len(gpu_temperature_c)
        if share >= MAX_TEMPERATURE_OUT_OF_RANGE:
            out.append(Check("temperature_range", "error",
                             f"{share:.1%} of GPU temperature readings outside "
                             f"[{low:g}, {high:g}] degC"))
    if output_lengths and max_output_tokens is not None:
        caps = [max_output_tokens] * len(output_lengths) \
            if isinstance(max_output_tokens, int) else list(max_output_tokens)
        capped = sum(1 for n, cap in zip(output_lengths, caps) if cap is not None and n >= cap)
        share = capped / len(output_lengths)
        if share >= MAX_LENGTH_CAP_SHARE:
            shown = (f"max_output_tokens={max_output_tokens}"
                     if isinstance(max_output_tokens, int) else "their max_output_tokens cap")
            out.append(Check("output_length", "warning", f"{share:.1%} of outputs hit {shown}"))
    return out
