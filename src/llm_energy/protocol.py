"""The measurement protocol for one cell: load (timed apart), idle baseline, warmup, cycles.

Produces the rows of the cell's data contract (see `results.py`); knows nothing of
Snakemake, so it also runs from the command line (`python -m llm_energy.measure`)."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from llm_energy import metrics
from llm_energy.backends import Backend, RequestRecord, backend_class
from llm_energy.flops import Architecture, peak_flops, request_flops
from llm_energy.meters import EstimateMeter, Meter, WindowEnergy, detect_meter
from llm_energy.sampler import Sample, Sampler, default_probes

Log = Callable[[str], None]


@dataclass
class CellOutput:
    runs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    timeseries: list[dict[str, Any]] = field(default_factory=list)
    energy_sources: dict[str, str] = field(default_factory=dict)


def batch_limit(backend: str, settings: dict[str, Any]) -> int:
    return int(settings.get("batch_size") or settings.get("max_num_seqs") or 1)


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


class CellRunner:
    def __init__(self, cell_config: dict[str, Any], model_path: str, log: Log = print,
                 meter: Meter | None = None) -> None:
        self.config = cell_config
        self.model_path = model_path
        self.log = log
        self.settings = dict(cell_config["settings"])
        self.workload = cell_config["workload"]
        self.measurement = cell_config["measurement"]
        self.device = self.measurement["device"]
        self.meter = meter or detect_meter(self.device, self.measurement["energy_source"],
                                           self.measurement["cpu_power_per_core_w"])
        self.cell_id = cell_config.get("cell_id", "")

    # ------------------------------------------------------------ phases

    def _make_backend(self) -> Backend:
        settings = {**self.settings,
                    "trust_remote_code": self.config["model"].get("trust_remote_code", False)}
        return backend_class(self.config["backend"])(self.model_path, settings, self.device)

    def _prompts(self) -> list[list[int]]:
        from transformers import AutoTokenizer

        from llm_energy.config import WorkloadConfig
        from llm_energy.workload import build_prompts

        tokenizer = AutoTokenizer.from_pretrained(
            self.model_path, trust_remote_code=self.config["model"].get("trust_remote_code", False))
        return build_prompts(tokenizer, WorkloadConfig(**self.workload))

    def _idle_power_w(self, backend: Backend, warnings: list[str]) -> float | None:
        duration = self.measurement["idle_duration_s"]
        if duration <= 0:
            warnings.append("idle baseline disabled (idle_duration_s=0): net energy not computed")
            return None
        backend.synchronize()
        self.meter.begin_window("idle")
        time.sleep(duration)
        window = self.meter.end_window("idle")
        warnings.extend(window.warnings)
        total = window.total_energy_j
        return None if total is None else total / window.duration_s

    def _warmup(self, backend: Backend, prompts: list[list[int]]) -> int:
        cfg = self.measurement["warmup"]
        warm_prompts = prompts[: batch_limit(self.config["backend"], self.settings)]
        durations: list[float] = []
        while len(durations) < cfg["max_runs"]:
            start = time.perf_counter()
            backend.generate(warm_prompts, self.workload["output_tokens"])
            backend.synchronize()
            durations.append(time.perf_counter() - start)
            recent = durations[-3:]
            if len(durations) >= max(cfg["min_runs"], 2) and len(recent) >= 2:
                cv = statistics.stdev(recent) / statistics.mean(recent)
                if cv < cfg["cv_threshold"]:
                    break
        return len(durations)

    def run(self) -> CellOutput:
        out = CellOutput(energy_sources=dict(self.meter.sources))
        threads = self.measurement.get("threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        estimate = isinstance(self.meter, EstimateMeter)
        sampler = Sampler(default_probes(self.device, self.measurement["cpu_power_per_core_w"]
                                         if estimate else None),
                          self.measurement["sampler_hz"]).start()
        phases: list[tuple[str, float, float]] = []
        backend = self._make_backend()
        base_warnings: list[str] = [self.meter.warning] if estimate else []
        try:
            self.log(f"[{self.cell_id}] loading model with {self.config['backend']}")
            t0 = time.perf_counter()
            self.meter.begin_window("load")
            load = backend.load()
            backend.synchronize()
            load_window = self.meter.end_window("load")
            phases.append(("load", t0, time.perf_counter()))
            prompts = self._prompts()
            t0 = time.perf_counter()
            idle_power_w = self._idle_power_w(backend, base_warnings)
            phases.append(("idle", t0, time.perf_counter()))
            t0 = time.perf_counter()
            warmup_runs = self._warmup(backend, prompts)
            phases.append(("warmup", t0, time.perf_counter()))
            self.log(f"[{self.cell_id}] load {load.duration_s:.1f} s, idle power "
                     f"{idle_power_w if idle_power_w is None else round(idle_power_w, 2)} W, "
                     f"{warmup_runs} warmup run(s)")
            arch = self._architecture()
            for cycle in range(self.measurement["cycles"]):
                if self.measurement["cooldown_s"] > 0:
                    time.sleep(self.measurement["cooldown_s"])
                backend.synchronize()
                self.meter.begin_window(f"cycle{cycle}")
                start_s = time.perf_counter()
                sampler.sample_now(start_s)
                records = backend.generate(prompts, self.workload["output_tokens"])
                backend.synchronize()
                end_s = time.perf_counter()
                sampler.sample_now(end_s)
                window = self.meter.end_window(f"cycle{cycle}")
                phases.append((f"cycle{cycle}", start_s, end_s))
                run, requests = self._cycle_rows(cycle, records, start_s, end_s, window,
                                                 idle_power_w, sampler.samples, arch)
                run.update(load_duration_s=load.duration_s, load_energy_j=load_window.total_energy_j,
                           warmup_runs=warmup_runs, device_name=self._device_name())
                run["warnings"] = [*base_warnings, *load_window.warnings, *run["warnings"]]
                out.runs.append(run)
                out.requests.extend(requests)
                self.log(f"[{self.cell_id}] cycle {cycle + 1}/{self.measurement['cycles']}: "
                         f"{run['output_tokens_per_s']:.1f} tok/s, "
                         f"{_fmt(run['energy_per_output_token_j'])} J/token ({run['energy_source']})")
        finally:
            samples = sampler.stop()
            backend.close()
        out.timeseries = self._timeseries_rows(samples, phases)
        return out

    # ------------------------------------------------------------ rows

    def _architecture(self) -> Architecture | None:
        try:
            return Architecture.from_config(json.loads((Path(self.model_path) / "config.json").read_text()))
        except (OSError, KeyError, ValueError):
            return None

    def _device_name(self) -> str:
        if self.device == "cuda":
            import torch

            return torch.cuda.get_device_name(0)
        from llm_energy.provenance import cpu_model

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
                "arrival_s": r.arrival_s - start_s,
                "first_token_s": None if r.first_token_s is None else r.first_token_s - start_s,
                "finish_s": None if r.finish_s is None else r.finish_s - start_s,
                "ttft_ms": metrics.ttft_ms(r), "tpot_ms": metrics.tpot_ms(r),
                "e2e_ms": metrics.e2e_ms(r), "itl_ms": metrics.itl_ms(r),
                "energy_j": energy, "success": r.success,
            })
        ok = [r for r in records if r.success]
        output_tokens = sum(r.output_tokens for r in ok)
        input_tokens = sum(r.input_tokens for r in ok)
        expected = self.workload["output_tokens"] * len(records)
        if output_tokens != expected:
            warnings.append(f"{output_tokens} output tokens instead of {expected}")
        limit = batch_limit(self.config["backend"], self.settings)
        steady = metrics.steady_state_window(ok, limit)
        steady_j = steady_tokens = None
        if steady is None:
            warnings.append(f"no steady state: the load never kept {limit} requests in flight")
        elif total_j is not None:
            steady_tokens = metrics.tokens_in(ok, steady.start_s, steady.end_s)
            if len(profile) >= 2:
                whole = metrics.integrate_power(profile, start_s, end_s)
                part = metrics.integrate_power(profile, steady.start_s, steady.end_s)
                steady_j = total_j * part / whole if whole > 0 else None
            else:
                warnings.append("fewer than 2 power samples in the cycle: steady-state energy "
                                "apportioned by time")
                steady_j = total_j * steady.duration_s / duration_s
        coverage_s = self.measurement["sampler_hz"] * duration_s
        cycle_samples = sum(1 for s in samples if s.device == "cpu" and start_s <= s.t_s <= end_s)
        if coverage_s >= 2 and cycle_samples < 0.95 * int(coverage_s):
            warnings.append(f"telemetry coverage {cycle_samples}/{int(coverage_s)} samples "
                            f"(< 95%) in cycle {cycle}")
        net_j = None if total_j is None or idle_power_w is None else total_j - idle_power_w * duration_s
        cycle_flops = sum(request_flops(arch, r.input_tokens, r.output_tokens) for r in ok) if arch else None
        peak = peak_flops(self._device_name()) if self.device == "cuda" else None
        achieved = cycle_flops / duration_s if cycle_flops is not None else None
        memories = [s.memory_mb for s in samples if s.memory_mb is not None
                    and start_s <= s.t_s <= end_s and (s.device != "cpu" or self.device == "cpu")]
        row: dict[str, Any] = {
            "cell_id": self.cell_id, "cycle": cycle, "model": self.config["model"]["name"],
            "backend": self.config["backend"], **self.settings, "device": self.device,
            "status": "ok", "error": None, **_energy_columns(window),
            "idle_power_w": idle_power_w, "net_energy_j": net_j, "duration_s": duration_s,
            "steady_state_duration_s": None if steady is None else steady.duration_s,
            "steady_state_energy_j": steady_j, "steady_state_output_tokens": steady_tokens,
            "input_tokens": input_tokens, "output_tokens": output_tokens, "requests": len(records),
            "energy_per_output_token_j": None if total_j is None or not output_tokens else total_j / output_tokens,
            "energy_per_request_j": None if total_j is None or not records else total_j / len(records),
            "output_tokens_per_s": output_tokens / duration_s,
            "avg_power_w": None if total_j is None else total_j / duration_s,
            "flops_per_token": cycle_flops / output_tokens if cycle_flops and output_tokens else None,
            "achieved_tflops": None if achieved is None else achieved / 1e12,
            "mfu": None if achieved is None or peak is None else achieved / peak,
            "peak_memory_mb": max(memories) if memories else None,
            "warnings": warnings,
        }
        for name, values in (("ttft", [metrics.ttft_ms(r) for r in ok]),
                             ("itl", [x for r in ok for x in metrics.itl_ms(r)]),
                             ("tpot", [metrics.tpot_ms(r) for r in ok]),
                             ("e2e", [metrics.e2e_ms(r) for r in ok])):
            clean = [v for v in values if v is not None]
            for q in metrics.PERCENTILES:
                row[f"{name}_ms_p{q}"] = metrics.percentile(clean, q)
        return row, request_rows

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
