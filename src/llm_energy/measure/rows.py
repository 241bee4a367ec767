"""Rows of a cell's data contract built from one cycle's records, window energy and samples
(see `llm_energy.results`). Mixed into `CellRunner`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from llm_energy.backends import RequestRecord, registry
from llm_energy.measure import metrics, mlenergy, request_checks
from llm_energy.measure.flops import Architecture, peak_flops, request_flops
from llm_energy.results.schema import percentile_column
from llm_energy.study.config import WorkloadConfig
from llm_energy.telemetry.meters import WindowEnergy
from llm_energy.telemetry.sampler import Sample


def batch_limit(backend: str, settings: dict[str, Any],
                workload: dict[str, Any] | None = None) -> int:
    """Requests the backend runs at once: its batching limit and, for server backends in a
    closed loop, the client's concurrency, whichever is lower."""
    spec = registry.get(backend)
    limits = [v for v in (spec.batch_limit(settings),) if v]
    if workload is not None and spec.is_server(settings) \
            and WorkloadConfig.model_validate(workload).arrival == "closed":
        from llm_energy.loadgen.client import LoadSpec

        limits.append(LoadSpec.from_workload(workload).in_flight_limit(int(workload["num_prompts"])))
    return min(limits) if limits else 1


def _power_profile(samples: list[Sample], start_s: float, end_s: float) -> list[tuple[float, float]]:
    """Summed power across devices per sampler tick, within [start, end] plus one tick around."""
    by_tick: dict[float, float] = {}
    for s in samples:
        if s.power_w is not None:
            by_tick[s.t_s] = by_tick.get(s.t_s, 0.0) + s.power_w
    # Probes of one tick are sampled within microseconds; group by rounding to 1 ms.
    grouped: dict[float, float] = {}
    for t, p in by_tick.items():
        grouped[round(t, 3)] = grouped.get(round(t, 3), 0.0) + p
    return [(t, p) for t, p in sorted(grouped.items()) if start_s - 1.0 <= t <= end_s + 1.0]


def _energy_columns(window: WindowEnergy) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for domain in ("gpu", "cpu", "dram"):
        row[f"{domain}_energy_j"] = window.energy_j.get(domain)
        row[f"{domain}_energy_source"] = window.source.get(domain)
    row["total_energy_j"] = window.total_energy_j
    row["energy_source"] = window.energy_source
    return row


class RowBuilder:
    """Builds per-cycle, per-request and time-series rows from the runner's state."""

    def _architecture(self) -> Architecture | None:
        try:
            return Architecture.from_config(json.loads((Path(self.model_path) / "config.json").read_text()))
        except (OSError, KeyError, ValueError):
            return None

    def _device_name(self) -> str:
        if self.device == "cuda":
            import torch

            return torch.cuda.get_device_name(0)
        from llm_energy.measure.provenance import cpu_model

        return cpu_model()

    def _cycle_rows(self, cycle: int, records: list[RequestRecord], start_s: float, end_s: float,
                    window: WindowEnergy, idle_power_w: float | None, samples: list[Sample],
                    arch: Architecture | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        warnings = list(window.warnings)
        duration_s = window.duration_s
        total_j = window.total_energy_j
        profile = _power_profile(samples, start_s, end_s)
        shares = metrics.split_energy_by_tokens(records, start_s, end_s, total_j, profile) \
            if total_j is not None else [None] * len(records)
        request_rows = []
        for r, energy in zip(records, shares):
            request_rows.append({
                "cell_id": self.cell_id, "cycle": cycle, "request_id": r.request_id,
                "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                "target_output_tokens": r.target_output_tokens,
                "arrival_s": r.arrival_s - start_s,
                "first_token_s": None if r.first_token_s is None else r.first_token_s - start_s,
                "finish_s": None if r.finish_s is None else r.finish_s - start_s,
                "ttft_ms": metrics.ttft_ms(r), "tpot_ms": metrics.tpot_ms(r),
                "e2e_ms": metrics.e2e_ms(r), "itl_ms": metrics.itl_ms(r),
                "energy_j": energy, "success": r.success, "error": r.error,
            })
        ok = [r for r in records if r.success]
        output_tokens = sum(r.output_tokens for r in ok)
        input_tokens = sum(r.input_tokens for r in ok)
        warnings.extend(filter(None, [request_checks.failure_warning(cycle, records)]))
        warnings.extend(request_checks.arrival_warnings(cycle, ok))
        if self.exact_outputs:  # natural outputs end at EOS: any length up to the cap
            expected = sum(r.target_output_tokens or 0 for r in ok)
            if output_tokens != expected:
                warnings.append(f"{output_tokens} output tokens instead of {expected}")
        limit = batch_limit(self.config["backend"], self.settings, self.workload)
        steady = self._steady_window(records, ok, limit, warnings)
        steady_j = steady_tokens = avg_batch = None
        if steady is not None:
            steady_tokens = metrics.tokens_in(records, steady.start_s, steady.end_s)
            avg_batch = mlenergy.avg_batch_size(ok, steady.start_s, steady.end_s)
        if steady is not None and total_j is not None:
            if len(profile) >= 2:
                whole = metrics.integrate_power(profile, start_s, end_s)
                part = metrics.integrate_power(profile, steady.start_s, steady.end_s)
                steady_j = total_j * part / whole if whole > 0 else None
            else:
                warnings.append("fewer than 2 power samples in the cycle: steady-state energy "
                                "apportioned by time")
                steady_j = total_j * steady.duration_s / duration_s
        net_j = None if total_j is None or idle_power_w is None else total_j - idle_power_w * duration_s
        cycle_flops = sum(request_flops(arch, r.input_tokens, r.output_tokens) for r in ok) if arch else None
        peak = peak_flops(self._device_name()) if self.device == "cuda" else None
        achieved = cycle_flops / duration_s if cycle_flops is not None else None
        cycle_samples = [s for s in samples if start_s <= s.t_s <= end_s]
        memories = [s.memory_mb for s in cycle_samples if s.memory_mb is not None
                    and (s.device != "cpu" or self.device == "cpu")]
        row: dict[str, Any] = {
            "cell_id": self.cell_id, "cycle": cycle, "model": self.config["model"]["name"],
            "backend": self.config["backend"], **self.settings, "device": self.device,
            "status": "ok", "error": None, **_energy_columns(window),
            "idle_power_w": idle_power_w, "net_energy_j": net_j, "duration_s": duration_s,
            "steady_state_duration_s": None if steady is None else steady.duration_s,
            "steady_state_energy_j": steady_j, "steady_state_output_tokens": steady_tokens,
            "steady_state_rule": self._steady_state_rule(), "avg_batch_size": avg_batch,
            # Relative to the cycle start, like the request times in requests.parquet.
            "steady_state_start_s": None if steady is None else steady.start_s - start_s,
            "steady_state_end_s": None if steady is None else steady.end_s - start_s,
            "input_tokens": input_tokens, "output_tokens": output_tokens,
            # Successful requests, like the tokens: the metrics cover those (success_rate).
            "requests": len(ok),
            "energy_per_output_token_j": None if total_j is None or not output_tokens else total_j / output_tokens,
            "energy_per_request_j": None if total_j is None or not ok else total_j / len(ok),
            "output_tokens_per_s": output_tokens / duration_s,
            "avg_power_w": None if total_j is None else total_j / duration_s,
            "flops_per_token": cycle_flops / output_tokens if cycle_flops and output_tokens else None,
            "achieved_tflops": None if achieved is None else achieved / 1e12,
            "mfu": None if achieved is None or peak is None else achieved / peak,
            "peak_memory_mb": max(memories) if memories else None,
            "success_rate": request_checks.success_rate(records),
            "warnings": warnings,
        }
        checks = mlenergy.failed_checks(
            steady_duration_s=None if steady is None else steady.duration_s, avg_batch=avg_batch,
            max_num_seqs=limit,
            steady_energy_per_token_j=steady_j / steady_tokens
            if steady_j is not None and steady_tokens else None,
            output_tokens_per_s=row["output_tokens_per_s"],
            gpu_power_w=[s.power_w for s in cycle_samples if s.device.startswith("gpu")
                         and s.power_w is not None],
            gpu_temperature_c=[s.temperature_c for s in cycle_samples if s.device.startswith("gpu")
                               and s.temperature_c is not None],
            device_name=self._device_name() if self.device == "cuda" else None,
            # Exact outputs (EOS ignored) are at their length by design: nothing to judge.
            output_lengths=[r.output_tokens for r in ok],
            max_output_tokens=None if self.exact_outputs
            else [r.target_output_tokens for r in ok],
            failed_requests=len(records) - len(ok))
        row["mlenergy_flags"] = [c.name for c in checks]
        row["mlenergy_valid"] = not any(c.severity == "error" for c in checks)
        warnings.extend(c.warning() for c in checks)
        gaps_ms = [x for r in ok for x in metrics.itl_ms(r)]
        for name, values in (("ttft", [metrics.ttft_ms(r) for r in ok]),
                             ("itl", gaps_ms),
                             ("tpot", [metrics.tpot_ms(r) for r in ok]),
                             ("e2e", [metrics.e2e_ms(r) for r in ok])):
            clean = [v for v in values if v is not None]
            for q in metrics.PERCENTILES:
                row[percentile_column(name, q)] = metrics.percentile(clean, q)
        return row, request_rows

    def _steady_state_rule(self) -> str:
        return str(self.measurement.get("steady_state_rule", "mlenergy"))

    def _steady_window(self, records: list[RequestRecord], ok: list[RequestRecord], limit: int,
                       warnings: list[str]) -> metrics.SteadyState | None:
        """The cycle's steady-state window by the configured rule (`steady_state_rule`):
        ML.ENERGY's RequestTracker rule over every request (`mlenergy.tracker_window`), or
        this project's batch-full window over the successful ones. None, with a warning,
        when there is none or it is empty."""
        if self._steady_state_rule() == "batch-full":
            steady = metrics.batch_full_window(ok, limit)
            if steady is None:
                warnings.append(f"no steady state: the running requests never reached {limit}")
            return steady
        open_loop = registry.get(self.config["backend"]).is_server(self.settings) \
            and self.workload["arrival"] != "closed"
        steady = mlenergy.tracker_window(
            records, limit, max(r.arrival_s for r in records) if open_loop and records else None)
        if steady is None or steady.duration_s <= 0:
            k = max(len(records) - limit - 1, 1)
            warnings.append(
                f"no steady state by ML.ENERGY's rule (opens when {limit} requests have their "
                f"first token, closes when {k} of {len(records)} have finished): the window is "
                "empty in this cycle; use more requests per cycle (ML.ENERGY: far more than "
                "max_num_seqs)")
            return None
        return steady

    def _timeseries_rows(self, samples: list[Sample],
                         phases: list[tuple[str, float, float]]) -> list[dict[str, Any]]:
        origin = phases[0][1] if phases else (samples[0].t_s if samples else 0.0)
        rows = []
        for s in samples:
            phase = next((name for name, a, b in phases if a <= s.t_s <= b), "between")
            rows.append({**asdict(s), "cell_id": self.cell_id, "t_s": s.t_s - origin, "phase": phase})
        return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
