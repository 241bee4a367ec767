"""The measurement protocol for one cell: load (timed apart), idle baseline, warmup, cycles.

Produces the rows of the cell's data contract (see `results.py`); knows nothing of
Snakemake, so it also runs from the command line (`python -m llm_energy.measure.child`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_energy.backends import Backend, backend_class
from llm_energy.measure.gpu_settings import GpuSettingsPhase
from llm_energy.measure.idle_cache import (
    IdleCache,
    IdleEntry,
    cache_key,
    drifted,
    host_name,
)
from llm_energy.measure.request_checks import raise_if_all_failed
from llm_energy.measure.rows import RowBuilder, _fmt, batch_limit
from llm_energy.measure.validity import ValidityChecks
from llm_energy.telemetry.meters import Detection, EstimateMeter, Meter, detect
from llm_energy.telemetry.sampler import Sampler, default_probes

Log = Callable[[str], None]

@dataclass
class CellOutput:
    runs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    timeseries: list[dict[str, Any]] = field(default_factory=list)
    energy_sources: dict[str, str] = field(default_factory=dict)


class CellRunner(ValidityChecks, RowBuilder, GpuSettingsPhase):
    def __init__(self, cell_config: dict[str, Any], model_path: str, log: Log = print,
                 meter: Meter | None = None) -> None:
        self.config = cell_config
        self.model_path = model_path
        self.log = log
        self.settings = dict(cell_config["settings"])
        self.workload = cell_config["workload"]
        self.measurement = cell_config["measurement"]
        self.device = self.measurement["device"]
        if meter is not None:
            self.detection = Detection(meter)
        else:
            self.detection = detect(
                self.device, self.measurement["energy_source"],
                self.measurement["cpu_power_per_core_w"],
                sample_period_s=1.0 / self.measurement["sampler_hz"],
                gpus_per_cell=int(self.measurement.get("gpus_per_cell", 1)))
        self.meter = self.detection.meter
        self.cell_id = cell_config.get("cell_id", "")
        self.preflight_temperature_c: dict[str, float | None] = {}
        self._first_cycle_temp: dict[str, float] = {}

    # ------------------------------------------------------------ phases

    def _make_backend(self) -> Backend:
        settings = {**self.settings,
                    "trust_remote_code": self.config["model"].get("trust_remote_code", False)}
        backend = backend_class(self.config["backend"], settings)(self.model_path, settings,
                                                                  self.device)
        # Server backends read the arrival process and telemetry rate from these.
        backend.workload, backend.measurement = dict(self.workload), dict(self.measurement)
        return backend

    def _prompts(self) -> list[list[int]]:
        from transformers import AutoTokenizer

        from llm_energy.study.config import WorkloadConfig
        from llm_energy.workload.prompts import build_prompts

        tokenizer = AutoTokenizer.from_pretrained(
            self.model_path, trust_remote_code=self.config["model"].get("trust_remote_code", False))
        return build_prompts(tokenizer, WorkloadConfig(**self.workload))

    def _idle_window_w(self, backend: Backend, name: str, duration_s: float,
                       warnings: list[str]) -> float | None:
        backend.synchronize()
        self.meter.begin_window(name)
        self._edge_sample()
        time.sleep(duration_s)
        self._edge_sample()
        window = self.meter.end_window(name)
        warnings.extend(window.warnings)
        total = window.total_energy_j
        return None if total is None or window.duration_s <= 0 else total / window.duration_s

    def _idle_power_w(self, backend: Backend, warnings: list[str]) -> float | None:
        """Idle power with the model loaded: from the host+device cache when it is fresh and
        a short re-check agrees with it, else measured for `idle_duration_s` (and cached)."""
        duration = self.measurement["idle_duration_s"]
        self.idle_baseline = "disabled"
        if duration <= 0:
            warnings.append("idle baseline disabled (idle_duration_s=0): net energy not computed")
            return None
        m = self.measurement
        cache = IdleCache(m.get("idle_cache_dir", "results/.idle-cache"),
                          float(m.get("idle_cache_ttl_s", 0.0)))
        devices = [g.ident for g in self.detection.gpus] or [f"cpu:{self._device_name()}"]
        key = cache_key(host_name(), devices, self.meter.sources, self.config["backend"])
        entry = cache.get(key)
        if entry is not None:
            check_w = self._idle_window_w(backend, "idle-check",
                                          min(float(m.get("idle_revalidate_s", 1.0)), duration),
                                          warnings)
            tolerance = float(m.get("idle_drift_tolerance", 0.1))
            if check_w is not None and not drifted(entry.idle_power_w, check_w, tolerance):
                self.idle_baseline = "cached"
                return entry.idle_power_w
            if check_w is not None:
                warnings.append(f"idle power drifted from the cached {entry.idle_power_w:.2f} W "
                                f"to {check_w:.2f} W (> {tolerance:.0%}): baseline re-measured")
        power_w = self._idle_window_w(backend, "idle", duration, warnings)
        self.idle_baseline = "measured"
        if power_w is not None:
            cache.put(key, IdleEntry(power_w, time.time(), duration, host_name(), devices,
                                     dict(self.meter.sources), self.config["backend"]))
        return power_w

    def _warmup(self, backend: Backend, prompts: list[list[int]]) -> int:
        cfg = self.measurement["warmup"]
        warm_prompts = prompts[: batch_limit(self.config["backend"], self.settings, self.workload)]
        durations: list[float] = []
        while len(durations) < cfg["max_runs"]:
            start = time.perf_counter()
            raise_if_all_failed(backend.generate(warm_prompts, self.workload["output_tokens"]),
                                "the warmup")
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
        base_warnings: list[str] = [*self.detection.warnings, *self.meter.static_warnings]
        base_warnings.extend(self._preflight())
        sampler = Sampler(default_probes(self.device, self.measurement["cpu_power_per_core_w"]
                                         if estimate else None,
                                         self.detection.gpus, self.detection.nvml),
                          self.measurement["sampler_hz"], pollers=[self.meter.poll]).start()
        self._sampler = sampler
        attach = getattr(self.meter, "attach_sampler", None)
        if attach is not None:
            attach(sampler)
        phases: list[tuple[str, float, float]] = []
        self.idle_baseline = "disabled"
        backend = self._make_backend()
        try:
            # GPU power limit / clocks: checked and applied before the model loads; restored in
            # the `finally` below (by the runner or the next cell if this process dies).
            self._apply_gpu_settings(base_warnings)
            self.log(f"[{self.cell_id}] loading model with {self.config['backend']}")
            t0 = time.perf_counter()
            self.meter.begin_window("load")
            self._edge_sample()
            load = backend.load()
            backend.synchronize()
            self._edge_sample()
            load_window = self.meter.end_window("load")
            phases.append(("load", t0, time.perf_counter()))
            prompts = self._prompts()
            t0 = time.perf_counter()
            idle_power_w = self._idle_power_w(backend, base_warnings)
            phases.append(("idle", t0, time.perf_counter()))
            t0 = time.perf_counter()
            self._edge_sample()
            warmup_runs = self._warmup(backend, prompts)
            self._edge_sample()
            phases.append(("warmup", t0, time.perf_counter()))
            base_warnings.extend(self._phase_sample_warnings(sampler.samples, phases))
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
                raise_if_all_failed(records, f"cycle {cycle}")  # a failed cell, with the reason
                backend.synchronize()
                end_s = time.perf_counter()
                sampler.sample_now(end_s)
                window = self.meter.end_window(f"cycle{cycle}")
                phases.append((f"cycle{cycle}", start_s, end_s))
                run, requests = self._cycle_rows(cycle, records, start_s, end_s, window,
                                                 idle_power_w, sampler.samples, arch)
                validity, columns = self._cycle_validity(cycle, start_s, end_s, window,
                                                         list(sampler.samples), phases,
                                                         run.get("net_energy_j"))
                run["warnings"].extend(validity)
                run.update(columns)
                run.update(backend.cycle_columns(start_s, end_s))
                run["warnings"].extend(backend.cycle_warnings(cycle, start_s, end_s))
                run.update(self._gpu_cycle_columns(sampler.samples, start_s, end_s, run["warnings"]))
                run.update(load_duration_s=load.duration_s, load_energy_j=load_window.total_energy_j,
                           warmup_runs=warmup_runs, device_name=self._device_name(),
                           # On the timeseries clock (origin: start of load), for plots.
                           cycle_start_s=start_s - phases[0][1])
                run["warnings"] = [*base_warnings, *load_window.warnings, *run["warnings"]]
                out.runs.append(run)
                out.requests.extend(requests)
                self.log(f"[{self.cell_id}] cycle {cycle + 1}/{self.measurement['cycles']}: "
                         f"{run['output_tokens_per_s']:.1f} tok/s, "
                         f"{_fmt(run['energy_per_output_token_j'])} J/token ({run['energy_source']})")
        finally:
            samples = sampler.stop()
            try:
                backend.close()
            finally:
                restore_warnings = self._restore_gpu_settings()
        for run in out.runs:
            run["warnings"].extend(restore_warnings)
        out.timeseries = self._timeseries_rows([*samples, *backend.telemetry()], phases)
        return out
