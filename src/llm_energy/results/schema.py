"""The column registry: one declaration per column of every file this project writes.

Each `Column` says its name, Arrow type, unit, kind, how the summary aggregates it across a
cell's cycles, its display label and number format, its ML.ENERGY export name and a one-line
meaning. The Parquet writers (`results.io`), the summary, the report table, `compare`, the
ML.ENERGY export and docs/data-contract.md (`llm-energy data-contract`) all derive from here:
adding a column is one declaration.

Cell settings are the fields of the backend configurations (`setting_names`); a column that
is neither declared here nor a setting is carried in the files but never treated as a setting.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import pyarrow as pa

from llm_energy.results.columns import (  # noqa: F401 - re-exported: the registry's vocabulary
    _B,
    _F,
    _I,
    _S,
    ALL,
    FIRST,
    LATENCIES,
    MAX,
    MEAN,
    PERCENTILES,
    SCHEMA_VERSION,
    ST,
    SUM,
    UNION,
    Agg,
    Column,
    K,
    Kind,
    M,
    join,
    percentile_column,
    ratio,
    weighted,
)

_E = {"basis": "energy"}
_SLO = "studies with an `slo:` section"


def _energy(domain: str) -> list[Column]:
    return [Column(f"{domain}_energy_j", _F, M, "J", f"{domain.upper()} energy of the cycle window",
                   MEAN, True, True, **_E),
            Column(f"{domain}_energy_source", _S, ST, "",
                   f"source of `{domain}_energy_j` (`nvml-counter`, `amdsmi`, `nvml-power`, "
                   "`rapl`, `estimate`); null where absent")]


_REPORT = {(l_, q): r for r, l_, q in ((3, "itl", 50), (4, "itl", 95), (5, "ttft", 50), (6, "e2e", 50))}
_COMPARE = {("itl", 50), ("itl", 90), ("itl", 99), ("ttft", 50), ("ttft", 90), ("e2e", 50)}
_EXPORT = {("itl", 50): "median_itl_ms", **{("itl", q): f"p{q}_itl_ms" for q in (90, 95, 99)}}


def _percentiles() -> list[Column]:
    return [Column(percentile_column(lat, q), _F, M, "ms",
                   f"p{q} of the cycle's {meaning} over its successful requests", MEAN, True, True,
                   label=f"{lat.upper()} p{q} (ms)", digits=1 if lat in ("ttft", "e2e") else 2,
                   report=_REPORT.get((lat, q)), compare=(lat, q) in _COMPARE,
                   export=_EXPORT.get((lat, q)))
            for lat, meaning in LATENCIES.items() for q in PERCENTILES]


def _declare(columns: Iterable[Column]) -> dict[str, Column]:
    out: dict[str, Column] = {}
    for c in columns:
        assert c.name not in out, c.name
        out[c.name] = c
    return out


#: runs.parquet: one row per measured cycle (a failed cell: one row with its error).
RUNS = _declare([
    Column("schema_version", _I, ST, "", "version of this contract"),
    Column("cell_id", _S, K, "", "hash of what the cell measures", FIRST),
    Column("cycle", _I, K, "", "cycle number from 0 (null in a failed cell's row)"),
    Column("model", _S, K, "", "model name from the study", FIRST),
    Column("backend", _S, K, "", "backend name", FIRST),
    Column("device", _S, ST, "", "`cpu` or `cuda`", FIRST),
    Column("device_name", _S, ST, "", "CPU or GPU model", FIRST),
    Column("status", _S, ST, "", "`ok` or `failed`"),
    Column("error", _S, ST, "", "why the cell failed", join("; ")),
    Column("warnings", pa.list_(_S), ST, "", "validity flags", UNION),
    *_energy("gpu"), *_energy("cpu"), *_energy("dram"),
    Column("total_energy_j", _F, M, "J", "sum of the domains measured (null when any failed in "
           "the window: see `warnings`)", MEAN, True, True, **_E),
    Column("energy_source", _S, ST, "", "the domains' sources joined with `+`", join("+")),
    Column("idle_power_w", _F, M, "W", "power with the model loaded and idle (baseline)", MEAN,
           True, True, label="idle (W)", digits=2, report=8, **_E),
    Column("net_energy_j", _F, M, "J", "`total_energy_j − idle_power_w × duration_s`", MEAN, True,
           **_E),
    Column("duration_s", _F, M, "s", "cycle window length", MEAN, True, True,
           export="duration_seconds"),
    Column("steady_state_duration_s", _F, M, "s", "length of the steady-state window by "
           "`steady_state_rule` (null when there is none or it is empty)", MEAN, True, True,
           export="steady_state_duration_seconds"),
    Column("steady_state_energy_j", _F, M, "J", "energy of the steady-state window", MEAN, True,
           True, export="total_energy_joules", **_E),
    Column("steady_state_output_tokens", _I, M, "tokens", "output tokens in the steady-state "
           "window", MEAN),
    Column("cycle_start_s", _F, M, "s", "the cycle's start on the `timeseries.parquet` clock "
           "(seconds from the start of model load)"),
    Column("steady_state_start_s", _F, M, "s", "steady-state window start, seconds from the cycle "
           "start (the clock of `requests.parquet`); null when never"),
    Column("steady_state_end_s", _F, M, "s", "steady-state window end, same clock"),
    Column("steady_state_rule", _S, ST, "", "`mlenergy` (ML.ENERGY's RequestTracker rule: opens "
           "when `max_num_seqs` requests have their first token, closes when N − `max_num_seqs` − 1 "
           "have finished) or `batch-full` (docs/methodology.md)", FIRST),
    Column("avg_batch_size", _F, M, "requests", "time average of the running requests over the "
           "steady window (ML.ENERGY's average batch); null without a window (older results: "
           "the summary derives it from request times)", MEAN, True, True, label="avg batch",
           digits=2, report=10, export="avg_batch_size"),
    Column("mlenergy_flags", pa.list_(_S), ST, "", "ML.ENERGY's per-run checks that failed in "
           "this cycle (`steady_state_duration`, `batch_size_saturation`, `metrics_valid`, "
           "`power_range`, `temperature_range`, `output_length`, `request_success`)", UNION),
    Column("mlenergy_valid", _B, ST, "", "true when none of ML.ENERGY's error-level checks failed",
           ALL),
    Column("input_tokens", _I, M, "tokens", "prompt tokens of the cycle's successful requests",
           MEAN),
    Column("output_tokens", _I, M, "tokens", "output tokens of the cycle's successful requests",
           MEAN, export="total_output_tokens"),
    Column("requests", _I, M, "", "successful requests of the cycle (the metrics cover those)",
           MEAN, export="num_requests"),
    Column("success_rate", _F, M, "", "share of the cycle's requests that succeeded (0–1); when "
           "any failed, `warnings` says so with the most common reason, and each request's "
           "`error` is in `requests.parquet`", MEAN),
    Column("energy_per_output_token_j", _F, M, "J", "`total_energy_j ÷ output_tokens`",
           ratio("total_energy_j", "output_tokens"), True, True, label="J/token", digits=4,
           report=1, compare=True, export="energy_per_token_joules", export_window="cycle", **_E),
    Column("energy_per_request_j", _F, M, "J", "`total_energy_j ÷ requests`",
           ratio("total_energy_j", "requests"), True, True, label="J/request", report=9,
           compare=True, **_E),
    Column("output_tokens_per_s", _F, M, "tokens/s", "`output_tokens ÷ duration_s`",
           ratio("output_tokens", "duration_s"), True, True, label="tokens/s", digits=1,
           report=2, compare=True, export="output_throughput_tokens_per_sec",
           export_window="cycle"),
    Column("avg_power_w", _F, M, "W", "`total_energy_j ÷ duration_s`",
           ratio("total_energy_j", "duration_s"), True, True, label="power (W)", digits=2,
           report=7, compare=True, export="avg_power_watts", export_window="cycle", **_E),
    *_percentiles(),
    Column("flops_per_token", _F, M, "FLOP", "analytic forward FLOPs the engine needs for the "
           "cycle, per output token (prefill included; LM head once per output token; MoE: "
           "activated experts only; causal attention)", weighted("output_tokens")),
    Column("achieved_tflops", _F, M, "TFLOP/s", "the cycle's FLOPs ÷ `duration_s`",
           weighted("duration_s"), True, True, label="TFLOP/s", digits=4, basis="flops",
           report=11),
    Column("mfu", _F, M, "", "`achieved_tflops` ÷ the device's peak where known",
           weighted("duration_s"), True, True, basis="flops"),
    Column("peak_memory_mb", _F, M, "MiB", "peak resident memory (CPU) or device memory (GPU) "
           "in the cycle", MAX),
    Column("load_duration_s", _F, ST, "s", "model load time, measured apart from inference",
           FIRST),
    Column("load_energy_j", _F, ST, "J", "model load energy", FIRST, basis="energy"),
    Column("warmup_runs", _I, ST, "", "warmup runs before the cycles", FIRST),
    Column("idle_baseline", _S, ST, "", "`measured`, `cached` (re-validated cache hit) or "
           "`disabled` (docs/methodology.md)", FIRST),
    Column("gpu_power_integral_j", _F, M, "J", "GPU energy from integrated NVML power samples: "
           "the cross-check of `nvml-counter` (null without NVML)", MEAN, basis="energy"),
    Column("preflight_temperature_c", _F, ST, "°C", "hottest job GPU before loading (null "
           "without NVML)", FIRST),
    # GPU settings read back each cycle on `cuda` (telemetry/gpu_control.py, docs/methodology.md).
    *(Column(name, dtype, kind, unit, text, agg, optional="GPU cells (cuda)")
      for name, dtype, kind, unit, text, agg in (
          ("gpu_power_limit_read_w", _F, M, "W", "power limit the GPU enforces (Zeus "
           "`get_power_management_limit`), mean over the cell's GPUs", MEAN),
          ("gpu_sm_clock_read_mhz", _F, M, "MHz", "median SM clock of the cycle's samples, mean "
           "over the cell's GPUs", MEAN),
          ("gpu_memory_clock_read_mhz", _F, M, "MHz", "median memory clock of the cycle's "
           "samples, mean over the cell's GPUs", MEAN),
          ("gpu_throttle_reasons", pa.list_(_S), ST, "", "NVML clock-event reasons seen in the "
           "cycle (`sw power cap`, `hw slowdown`, `sw thermal`, ...)", UNION),
          ("gpu_settings_mismatch", _B, M, "", "true when a read-back value differs from what "
           "the cell asked (power limit by > 1 W, a clock outside the locked range ± 15 MHz; "
           "each case a line in `warnings`); null when nothing was asked. Summary: 1 when any "
           "cycle differed", MAX))),
    Column("repetitions", _I, M, "", "times the workload (`num_prompts` requests) ran in the "
           "cycle's window so that it reached `min_window_s`; `requests` = `num_prompts` × "
           "`repetitions`", MEAN),
    Column("min_window_s", _F, ST, "s", "the cycle window's floor applied (configured, or the "
           "energy source's default; docs/methodology.md#validity-gate)", FIRST),
    Column("target_ci_rel", _F, ST, "", "the validity gate's target for the J/token interval "
           "(± share of the value); null: none", FIRST),
    Column("other_processes_cpu_s", _F, M, "s", "CPU seconds used in the window by processes "
           "outside the cell's own process tree (machine busy time − the tree's); above "
           "`contention_cpu_cores` × `duration_s` the cycle is flagged `contention`", MEAN),
    *(Column(name, dtype, M, unit, text, agg, interval, optional="server backends")
      for name, dtype, unit, text, agg, interval in (
          ("server_metric_samples", _I, "", "`/metrics` scrapes inside the cycle", SUM, False),
          ("server_avg_batch_size", _F, "requests", "mean of the server's running-requests "
           "gauge over the cycle's scrapes", MEAN, True),
          ("server_max_batch_size", _F, "requests", "max of the running-requests gauge", MAX,
           False),
          ("server_kv_cache_usage_pct_mean", _F, "%", "mean KV-cache use over the scrapes", MEAN,
           True),
          ("server_kv_cache_usage_pct_max", _F, "%", "max KV-cache use", MAX, False))),
])

#: Per-cycle metrics the summary derives (from runs and requests) before aggregating.
DERIVED = _declare([
    Column("steady_state_energy_per_output_token_j", _F, M, "J", "`steady_state_energy_j ÷ "
           "steady_state_output_tokens` (ML.ENERGY's headline)",
           ratio("steady_state_energy_j", "steady_state_output_tokens"), True, True,
           export="energy_per_token_joules", export_window="steady_state", **_E),
    Column("steady_state_avg_power_w", _F, M, "W", "`steady_state_energy_j ÷ "
           "steady_state_duration_s`", ratio("steady_state_energy_j", "steady_state_duration_s"),
           True, True, export="avg_power_watts", export_window="steady_state", **_E),
    Column("steady_state_output_tokens_per_s", _F, M, "tokens/s", "`steady_state_output_tokens ÷ "
           "steady_state_duration_s`",
           ratio("steady_state_output_tokens", "steady_state_duration_s"), True, True,
           export="output_throughput_tokens_per_sec", export_window="steady_state"),
    # Latency SLOs (`slo:`, analysis-only): per cycle from requests.parquet (analysis/slo.py).
    *(Column(name, dtype, M, unit, text, agg, interval, positive, optional=_SLO, **extra)
      for name, dtype, unit, text, agg, interval, positive, extra in (
          ("requests_sent", _I, "", "requests of the cycle, failed ones included", MEAN, False,
           False, {}),
          ("slo_requests", _I, "", "requests of the cycle that succeeded and met every "
           "threshold of `slo:`", MEAN, False, False, {}),
          ("slo_output_tokens", _I, "tokens", "output tokens of those requests", MEAN, False,
           False, {}),
          ("slo_attainment", _F, "", "share of the requests that met the SLO (0–1): "
           "`slo_requests ÷ requests_sent`", ratio("slo_requests", "requests_sent"), True, False,
           {"label": "SLO attainment", "digits": 3}),
          ("goodput_requests_per_s", _F, "requests/s", "SLO-meeting requests per second of the "
           "cycle window: `slo_requests ÷ duration_s` (aiperf's and vLLM's goodput)",
           ratio("slo_requests", "duration_s"), True, True, {"label": "goodput (req/s)",
                                                           "digits": 2}),
          ("energy_per_slo_request_j", _F, "J", "the cycle window's energy per SLO-meeting "
           "request: `total_energy_j ÷ slo_requests` (null when none met it)",
           ratio("total_energy_j", "slo_requests"), True, True,
           {"label": "J/SLO request", "basis": "energy"}),
          ("energy_per_slo_output_token_j", _F, "J", "the cycle window's energy per output "
           "token of SLO-meeting requests: `total_energy_j ÷ slo_output_tokens`",
           ratio("total_energy_j", "slo_output_tokens"), True, True,
           {"label": "J/SLO token", "digits": 4, "basis": "energy"}))),
])

#: requests.parquet: one row per request per cycle.
REQUESTS = _declare(Column(n, t, Kind.REQUEST, u, d) for n, t, u, d in (
    ("schema_version", _I, "", "version of this contract"),
    ("cell_id", _S, "", "the cell"), ("cycle", _I, "", "the cycle"),
    ("request_id", _I, "", "index of the request in the cycle: repetition k of the workload "
     "has k × `num_prompts` + the prompt's index"),
    ("input_tokens", _I, "tokens", "prompt length"),
    ("output_tokens", _I, "tokens", "tokens returned (under `output_policy: natural` up to and "
     "including the first EOS)"),
    ("target_output_tokens", _I, "tokens", "the request's output length from the workload: "
     "its exact length under `output_policy` fixed or dataset (EOS ignored), its cap under "
     "natural (EOS allowed)"),
    ("arrival_s", _F, "s", "sent, seconds from the cycle start"),
    ("first_token_s", _F, "s", "first token received, same clock"),
    ("finish_s", _F, "s", "last token received, same clock"),
    ("ttft_ms", _F, "ms", "time to first token"),
    ("tpot_ms", _F, "ms", "time per output token after the first: (E2E − TTFT) ÷ (n − 1), n the "
     "output tokens counted from what the server says (docs/methodology.md#token-arrivals)"),
    ("e2e_ms", _F, "ms", "end-to-end latency"),
    ("itl_ms", pa.list_(_F), "ms", "every inter-token gap (n − 1 of them)"),
    ("energy_j", _F, "J", "the cycle's energy split over requests by the tokens each processed in "
     "each interval; sums to `total_energy_j`"),
    ("success", _B, "", "the request returned what was asked"),
    ("error", _S, "", "why the request failed (e.g. `server returned 16 tokens, expected 32 "
     "(finish_reason 'length')`); null on success"),
))

#: timeseries.parquet: background telemetry, one row per device per tick.
TIMESERIES = _declare(Column(n, t, Kind.TIMESERIES, u, d, optional=o) for n, t, u, d, o in (
    ("schema_version", _I, "", "version of this contract", None),
    ("cell_id", _S, "", "the cell", None),
    ("t_s", _F, "s", "seconds from the start of model load", None),
    ("device", _S, "", "`cpu`, `gpu0`, ..., or `server` for rows scraped from a server", None),
    ("power_w", _F, "W", "power", None), ("power_source", _S, "", "source of `power_w`", None),
    ("temperature_c", _F, "°C", "temperature", None),
    ("utilization_pct", _F, "%", "utilisation", None), ("memory_mb", _F, "MiB", "memory used", None),
    ("sm_clock_mhz", _F, "MHz", "SM clock", None),
    ("memory_clock_mhz", _F, "MHz", "memory clock", None),
    ("phase", _S, "", "`load`, `idle`, `warmup`, `cycleN`, `between`", None),
    ("throttle_reasons", _I, "", "NVML clock-event reason bits (null off NVIDIA)", None),
    ("requests_running", _F, "requests", "server gauge: requests running", "server backends"),
    ("requests_waiting", _F, "requests", "server gauge: requests waiting", "server backends"),
    ("kv_cache_usage_pct", _F, "%", "server gauge: KV-cache use", "server backends"),
))

#: Columns only summary.parquet has (besides the aggregated ones and their statistics).
SUMMARY = _declare(Column(n, t, Kind.SUMMARY, u, d) for n, t, u, d in (
    ("cycles", _I, "", "successful cycles aggregated"),
    ("ci_rel_achieved", _F, "", "half the width of the 95% interval of "
     "`energy_per_output_token_j` ÷ its value (`_ci95_high − _ci95_low` ÷ 2 ÷ value): the "
     "validity gate's measure"),
    ("gate_met", _B, "", "`ci_rel_achieved ≤ target_ci_rel` (the rule the protocol stopped on); "
     "null without a target"),
    ("ci_note", _S, "", "why there is no interval (fewer than 2 cycles)"),
    ("energy_kwh_per_1k_tokens", _F, "kWh", "`energy_per_output_token_j` × 1000 ÷ 3.6e6 (and "
     "its `_ci95_low`/`_ci95_high`)"),
    ("co2e_g_per_1k_tokens", _F, "g", "kWh × PUE × grid intensity (and interval bounds)"),
    ("cost_per_1k_tokens", _F, "currency", "kWh × PUE × price (and interval bounds)"),
    ("grid_intensity_g_per_kwh", _F, "g/kWh", "factor used (`carbon:`)"),
    ("pue", _F, "", "factor used"), ("price_per_kwh", _F, "currency/kWh", "factor used"),
    ("currency", _S, "", "ISO 4217 code of the price"),
    ("slo_ttft_ms", _F, "ms", "TTFT threshold used (`slo:`; null: not checked)"),
    ("slo_tpot_ms", _F, "ms", "TPOT threshold used (`slo:`; null: not checked)"),
    ("slo_e2e_ms", _F, "ms", "E2E threshold used (`slo:`; null: not checked)"),
    ("slo_target_attainment", _F, "", "attainment a cell needs in `llm-energy recommend` "
     "(`slo:`)"),
))

#: Statistics the summary adds per aggregated metric (suffix → meaning).
INTERVAL_SUFFIXES = {"_std": "standard deviation of the per-cycle values",
                     "_ci95_low": "95% interval, low bound", "_ci95_high": "95% interval, high bound"}
BOOTSTRAP_SUFFIXES = {"_pooled": "percentile over all successful requests of the cell",
                      "_boot95_low": "95% bootstrap interval over requests, low bound",
                      "_boot95_high": "95% bootstrap interval over requests, high bound"}
STAT_SUFFIXES = (*INTERVAL_SUFFIXES, *BOOTSTRAP_SUFFIXES)


def arrow_columns(columns: dict[str, Column]) -> dict[str, pa.DataType]:
    """Name → Arrow type of the columns every file of that kind has (not the optional ones)."""
    return {n: c.dtype for n, c in columns.items() if c.optional is None and c.dtype is not None}


def aggregated() -> list[Column]:
    """Per-cycle metrics in the summary, in summary order (runs, then derived)."""
    return [c for c in (*RUNS.values(), *DERIVED.values()) if c.kind is M and c.agg is not None]


def column(name: str) -> Column | None:
    """The declaration of a runs, derived or summary column (None when undeclared)."""
    return RUNS.get(name) or DERIVED.get(name) or SUMMARY.get(name)


def report_columns() -> list[Column]:
    return sorted((c for c in (*RUNS.values(), *DERIVED.values()) if c.report is not None),
                  key=lambda c: c.report)


def compare_metrics() -> tuple[str, ...]:
    return tuple(c.name for c in aggregated() if c.compare)


def export_columns() -> dict[str, dict[str | None, str]]:
    """ML.ENERGY field → {energy window (None: either) → summary column}."""
    out: dict[str, dict[str | None, str]] = {}
    for c in (*RUNS.values(), *DERIVED.values()):
        if c.export:
            out.setdefault(c.export, {})[c.export_window] = c.name
    return out


def setting_names() -> tuple[str, ...]:
    """Every registered backend's settings (except `enabled`; backend registry), and the
    measurement axes (GPU power limit and clocks): the columns that are settings."""
    from llm_energy.backends import registry

    return _setting_names(registry.extra_backends())


@lru_cache(maxsize=4)
def _setting_names(extra_backends: str) -> tuple[str, ...]:
    from llm_energy.backends import registry
    from llm_energy.study.config import GPU_AXES

    names: list[str] = list(GPU_AXES)
    for spec in registry.specs().values():
        for name in spec.setting_names():
            if name not in names:
                names.append(name)
    return tuple(names)


def is_setting(name: str) -> bool:
    return name in setting_names()


def present_settings(frame: Any) -> list[str]:
    """Setting columns of a table (runs or summary) with a value in at least one row, in the
    table's order."""
    return [c for c in frame.columns if is_setting(c) and frame[c].notna().any()]
