"""The measurement protocol for one cell: load (timed apart), idle baseline, warmup, cycles.

Produces the rows of the cell's data contract (see `results.py`); knows nothing of
Snakemake, so it also runs from the command line (`python -m llm_energy.measure.child`)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_energy.backends import Backend, RequestRecord, backend_class, is_server
from llm_energy.measure import gate
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
from llm_energy.study.cellspec import CellSpec
from llm_energy.study.workload_spec import exact_outputs
from llm_energy.telemetry.meters import (
    Detection,
    EstimateMeter,
    Meter,
    WindowEnergy,
    detect,
)
from llm_energy.telemetry.meters.base import UPDATE_PERIODS_PER_WINDOW
from llm_energy.telemetry.meters.estimate import busy_core_seconds
from llm_energy.telemetry.proctree import ProcessTreeCpu
from llm_energy.telemetry.sampler import Sampler, default_probes

Log = Callable[[str], None]

@dataclass
class CellOutput:
    runs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    timeseries: list[dict[str, Any]] = field(default_factory=list)
    energy_sources: dict[str, str] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)  # file, token-id hash (provenance)


class CellRunner(ValidityChecks, RowBuilder, GpuSettingsPhase):
    def __init__(self, cell_config: CellSpec | dict[str, Any], model_path: str,
                 log: Log = print, meter: Meter | None = None) -> None:
        # Every key present, defaults from the one source (study config, backend settings).
        cell_config = CellSpec.of(cell_config).as_dict()
        self.config = cell_config
        self.model_path = model_path
        self.log = log
        self.settings = dict(cell_config["settings"])
        self.workload = cell_config["workload"]
        self.measurement = cell_config["measurement"]
        self.device = self.measurement["device"]
        #: EOS ignored, every output exactly its target (output_policy fixed, dataset).
        self.exact_outputs = exact_outputs(self.workload["output_policy"])
        if meter is not None:
            self.detection = Detection(meter)
        else:
            self.detection = detect(
                self.device, self.measurement["energy_source"],
                self.measurement["cpu_power_per_core_w"],
                sample_period_s=1.0 / self.measurement["sampler_hz"],
                gpus_per_cell=int(self.measurement["gpus_per_cell"]))
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
        """The workload's prompt token ids: read from the workload file the pipeline built
        (`workload_file`), else built here with the model's tokenizer (command-line use). Its
        arrival offsets are kept for the backend (server backends schedule by them); the
        token-id hash goes into provenance."""
        from llm_energy.workload.build import make_workload, read_workload

        path = self.config.get("workload_file")
        if path:
            built = read_workload(path)
        else:
            from transformers import AutoTokenizer

            built = make_workload(self.workload, AutoTokenizer.from_pretrained(
                self.model_path,
                trust_remote_code=self.config["model"].get("trust_remote_code", False)))
        if built.output_policy != self.workload["output_policy"]:
            raise ValueError(f"workload file {path} was built for output_policy "
                             f"{built.output_policy!r}, the cell asks for "
                             f"{self.workload['output_policy']!r}: rebuild it")
        self.arrival_offsets_s = list(built.arrival_offsets_s)
        # Per request: the exact target (fixed, dataset) or the cap (natural).
        self.output_targets = [int(n) for n in built.output_tokens]
        self.workload_info = {"file": path, "token_ids_sha256": built.token_ids_sha256,
                              "chat_template_applied": built.info.get("chat_template_applied"),
                              "num_requests": len(built.prompts)}
        return built.prompts

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
        cache = IdleCache(m["idle_cache_dir"], float(m["idle_cache_ttl_s"]))
        devices = [g.ident for g in self.detection.gpus] or [f"cpu:{self._device_name()}"]
        key = cache_key(host_name(), devices, self.meter.sources, self.config["backend"])
        entry = cache.get(key)
        if entry is not None:
            check_w = self._idle_window_w(backend, "idle-check",
                                          min(float(m["idle_revalidate_s"]), duration),
                                          warnings)
            tolerance = float(m["idle_drift_tolerance"])
            if check_w is not None and not drifted(entry.idle_power_w, check_w, tolerance):
                self.idle_baseline = "cached"
                return entry.idle_power_w
            if check_w is not None:
                warnings.append(f"idle power drifted from the cached {entry.idle_power_w:.2f} W "
                                f"to {check_w:.2f} W (> {tolerance:.0%}): baseline re-measured")
        power_w = self._idle_window_w(backend, "idle", duration, warnings)
        self.idle_baseline = "measured"
        if duration < self.meter.min_window_s:
            warnings.append(f"idle baseline measured over {duration:g} s, shorter than the "
                            f"{self.meter.min_window_s:g} s its energy source needs: "
                            "idle power and net energy are coarse (raise idle_duration_s)")
        if power_w is not None:
            cache.put(key, IdleEntry(power_w, time.time(), duration, host_name(), devices,
                                     dict(self.meter.sources), self.config["backend"]))
        return power_w

    def _warmup(self, backend: Backend, prompts: list[list[int]]) -> int:
        """Runs the first `batch_limit` prompts until their run time is stable (CV of the
        last three under `cv_threshold`) or `max_runs`; the times are kept in `_warmup_s`."""
        cfg = self.measurement["warmup"]
        warm_prompts = prompts[: batch_limit(self.config["backend"], self.settings, self.workload)]
        durations: list[float] = []
        while len(durations) < cfg["max_runs"]:
            start = time.perf_counter()
            raise_if_all_failed(backend.generate(warm_prompts,
                                                 self.output_targets[: len(warm_prompts)],
                                                 self.exact_outputs), "the warmup")
            backend.synchronize()
            durations.append(time.perf_counter() - start)
            self._warmup_s = durations
            recent = durations[-3:]
            if len(durations) >= max(cfg["min_runs"], 2) and len(recent) >= 2:
                cv = statistics.stdev(recent) / statistics.mean(recent)
                if cv < cfg["cv_threshold"]:
                    break
        return len(durations)

    def _min_window_s(self) -> tuple[float, list[str]]:
        """The cycle window's floor: `measurement.min_window_s`, or the energy source's own
        (`Meter.min_window_s`); never below 10 sensor update periods."""
        floor_s = UPDATE_PERIODS_PER_WINDOW * self.meter.update_period_s
        configured = self.measurement.get("min_window_s")
        if configured is None:
            return self.meter.min_window_s, []
        if configured < floor_s:
            source = "+".join(sorted(set(self.meter.sources.values())))
            return floor_s, [(f"measurement.min_window_s={configured:g} s is below 10 update "
                              f"periods of {source} ({floor_s:g} s): {floor_s:g} s used")]
        return float(configured), []

    def _planned_repetitions(self, min_window_s: float, prompts: list[list[int]]) -> int:
        """Repetitions for the first cycle of a server backend (one stream of R x num_prompts
        requests): from the last warmup run (its `batch_limit` prompts) scaled to the workload,
        and for Poisson arrivals at least the schedule's length."""
        warm = getattr(self, "_warmup_s", [])
        per_rep_s = None
        if warm:
            limit = batch_limit(self.config["backend"], self.settings, self.workload)
            per_rep_s = warm[-1] * math.ceil(len(prompts) / max(1, limit))
        rate = self.workload.get("request_rate_per_s")
        if self.workload.get("arrival") == "poisson" and rate:
            per_rep_s = max(per_rep_s or 0.0, len(prompts) / float(rate))
        return gate.repetitions_for(min_window_s, per_rep_s)

    def _fill_window(self, backend: Backend, prompts: list[list[int]], min_window_s: float,
                     planned: int, label: str = "cycle") -> tuple[list[RequestRecord], int, int]:
        """Runs the workload until `min_window_s` has passed: (records, repetitions,
        segments). A server backend gets `planned` repetitions as one stream of requests under
        the workload's arrival process; an offline engine gets the workload once per call,
        back to back (its latencies keep their meaning). A stream that ends early is followed
        at once by another segment sized from the time per repetition so far."""
        server = is_server(self.config["backend"], self.settings)
        records: list[RequestRecord] = []
        repetitions = segments = 0
        start_s = time.perf_counter()
        elapsed_s = 0.0
        while True:
            if not server:
                n = 1
            elif repetitions == 0:
                n = max(1, planned)
            else:
                n = gate.repetitions_for(min_window_s - elapsed_s, elapsed_s / repetitions)
            batch = backend.generate(prompts * n, self.output_targets * n, self.exact_outputs)
            raise_if_all_failed(batch, label)  # a failed cell, with the reason
            offset = repetitions * len(prompts)
            for record in batch:
                record.request_id += offset
            records.extend(batch)
            repetitions += n
            segments += 1
            backend.synchronize()
            elapsed_s = time.perf_counter() - start_s
            if elapsed_s >= min_window_s:
                return records, repetitions, segments

    def _cpu_snapshot(self) -> tuple[float, float]:
        """(machine busy core-seconds, this cell's process-tree CPU seconds)."""
        return busy_core_seconds(), self._tree.read_s(rescan=True)

    def _cycles(self, backend: Backend, prompts: list[list[int]], min_window_s: float,
                arch: Any, idle_power_w: float | None, load: Any, load_window: WindowEnergy,
                warmup_runs: int, base_warnings: list[str],
                phases: list[tuple[str, float, float]], out: CellOutput) -> None:
        """`cycles` cycles, then more while the J/token interval is wider than the target
        (`gate.more_cycles_needed`); each cycle's window at least `min_window_s` long."""
        m = self.measurement
        cycles = int(m["cycles"])
        max_cycles = max(cycles, int(m.get("max_cycles") or cycles))
        target = m.get("target_ci_rel")
        sampler = self._sampler
        planned = self._planned_repetitions(min_window_s, prompts)
        energy_j: list[float | None] = []
        tokens: list[float | None] = []
        j_per_token: list[float | None] = []
        per_rep_s: list[float | None] = []
        first_run = len(out.runs)
        cycle = 0
        while gate.more_cycles_needed(energy_j, tokens, cycles, max_cycles, target):
            if m["cooldown_s"] > 0:
                time.sleep(m["cooldown_s"])
            backend.synchronize()
            self.meter.begin_window(f"cycle{cycle}")
            cpu0 = self._cpu_snapshot()
            start_s = time.perf_counter()
            sampler.sample_now(start_s)
            records, repetitions, segments = self._fill_window(backend, prompts, min_window_s,
                                                               planned, f"cycle {cycle}")
            end_s = time.perf_counter()
            sampler.sample_now(end_s)
            cpu1 = self._cpu_snapshot()
            window = self.meter.end_window(f"cycle{cycle}")
            phases.append((f"cycle{cycle}", start_s, end_s))
            other_cpu_s = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1]))
            run, requests = self._cycle_rows(cycle, records, start_s, end_s, window,
                                             idle_power_w, sampler.samples, arch)
            validity, columns = self._cycle_validity(cycle, start_s, end_s, window,
                                                     list(sampler.samples), phases,
                                                     run.get("net_energy_j"), other_cpu_s)
            run["warnings"].extend(validity)
            run.update(columns)
            run.update(backend.cycle_columns(start_s, end_s))
            run["warnings"].extend(backend.cycle_warnings(cycle, start_s, end_s))
            run.update(self._gpu_cycle_columns(sampler.samples, start_s, end_s, run["warnings"]))
            run.update(load_duration_s=load.duration_s, load_energy_j=load_window.total_energy_j,
                       warmup_runs=warmup_runs, device_name=self._device_name(),
                       repetitions=repetitions, min_window_s=min_window_s,
                       target_ci_rel=target,
                       # On the timeseries clock (origin: start of load), for plots.
                       cycle_start_s=start_s - phases[0][1])
            run["warnings"] = [*base_warnings, *load_window.warnings, *run["warnings"]]
            out.runs.append(run)
            out.requests.extend(requests)
            energy_j.append(run["total_energy_j"])
            tokens.append(run["output_tokens"])
            j_per_token.append(run["energy_per_output_token_j"])
            per_rep_s.append((end_s - start_s) / repetitions)
            planned = gate.repetitions_for(min_window_s, per_rep_s[-1])
            stream = (f" as {segments} streams" if segments > 1
                      and is_server(self.config["backend"], self.settings) else "")
            self.log(f"[{self.cell_id}] cycle {cycle + 1}/{max_cycles}: "
                     f"{repetitions} repetition(s){stream} in {end_s - start_s:.2f} s, "
                     f"{run['output_tokens_per_s']:.1f} tok/s, "
                     f"{_fmt(run['energy_per_output_token_j'])} J/token ({run['energy_source']})")
            cycle += 1
        cell_warnings = gate.stationarity_warnings(per_rep_s, j_per_token,
                                                   float(m.get("stationarity_cv", 0.10)))
        achieved = gate.j_per_token_ci_rel(energy_j, tokens)
        if target is not None and (achieved is None or achieved > target):
            cell_warnings.append(
                f"validity gate not met: the 95% interval of J/token is "
                f"{'undefined' if achieved is None else f'+-{achieved:.1%}'} after "
                f"{len(j_per_token)} cycle(s) (max_cycles {max_cycles}), target +-{target:.1%}")
        for run in out.runs[first_run:]:
            run["warnings"].extend(cell_warnings)

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
            backend.workload["arrival_offsets_s"] = getattr(self, "arrival_offsets_s", None)
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
            min_window_s, window_warnings = self._min_window_s()
            base_warnings.extend(window_warnings)
            self._tree = self.meter.tree if estimate else ProcessTreeCpu()
            self._cycles(backend, prompts, min_window_s, arch, idle_power_w, load, load_window,
                         warmup_runs, base_warnings, phases, out)
        finally:
            samples = sampler.stop()
            try:
                backend.close()
            finally:
                restore_warnings = self._restore_gpu_settings()
        for run in out.runs:
            run["warnings"].extend(restore_warnings)
        out.timeseries = self._timeseries_rows([*samples, *backend.telemetry()], phases)
        out.workload = dict(getattr(self, "workload_info", {}))
        return out
