"""The measurement protocol for one cell: load (timed apart), idle baseline, warmup, cycles.

Produces the rows of the cell's data contract (see `results.py`); knows nothing of
Snakemake, so it also runs from the command line (`python -m llm_energy.measure.child`)."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from llm_energy.measure import metrics
from llm_energy.backends import Backend, RequestRecord, backend_class, is_server
from llm_energy.measure.flops import Architecture, peak_flops, request_flops
from llm_energy.measure.idle_cache import IdleCache, IdleEntry, cache_key, drifted, host_name
from llm_energy.telemetry.meters import Detection, EstimateMeter, Meter, WindowEnergy, detect
from llm_energy.telemetry.sampler import Sample, Sampler, default_probes

Log = Callable[[str], None]

#: Counter and integrated power of the same GPU window disagreeing by more than this share is
#: flagged (windows >= 5 s; NVML power is itself averaged over up to 1 s on some GPUs).
POWER_CROSSCHECK_TOLERANCE = 0.25


@dataclass
class CellOutput:
    runs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    timeseries: list[dict[str, Any]] = field(default_factory=list)
    energy_sources: dict[str, str] = field(default_factory=dict)


def batch_limit(backend: str, settings: dict[str, Any],
                workload: dict[str, Any] | None = None) -> int:
    """Requests the backend runs at once: its batching limit and, for server backends in a
    closed loop, the client's concurrency, whichever is lower."""
    limits = [int(v) for v in (settings.get("batch_size"), settings.get("max_num_seqs"),
                               settings.get("max_batch_size")) if v]
    if workload is not None and is_server(backend, settings) \
            and workload.get("arrival", "closed") == "closed":
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
            backend.close()
        out.timeseries = self._timeseries_rows([*samples, *backend.telemetry()], phases)
        return out

    # ------------------------------------------------------------ validity

    def _edge_sample(self) -> None:
        sampler = getattr(self, "_sampler", None)
        if sampler is not None:
            sampler.sample_now(time.perf_counter())

    def _own_pids(self) -> set[int]:
        import psutil

        me = psutil.Process()
        return {me.pid, *(c.pid for c in me.children(recursive=True))}

    def _preflight(self) -> list[str]:
        """Before loading: someone else's processes on the job's GPUs, and temperatures."""
        nvml, gpus = self.detection.nvml, self.detection.gpus
        if nvml is None or not gpus:
            return []
        from llm_energy.telemetry.meters.nvml import other_processes, temperatures_c

        warnings = []
        others = other_processes(nvml, gpus, self._own_pids())
        if others:
            warnings.append("other processes on the device at preflight: " + "; ".join(others))
        self.preflight_temperature_c = temperatures_c(nvml, gpus)
        return warnings

    def _phase_sample_warnings(self, samples: list[Sample],
                               phases: list[tuple[str, float, float]]) -> list[str]:
        devices = sorted({s.device for s in samples})
        warnings = []
        for name, a, b in phases:
            for device in devices:
                n = sum(1 for s in samples if s.device == device and a <= s.t_s <= b)
                if n < 2:
                    warnings.append(f"fewer than 2 telemetry samples ({n}) of {device} in "
                                    f"phase '{name}'")
        return warnings

    def _cycle_validity(self, cycle: int, start_s: float, end_s: float, window: WindowEnergy,
                        samples: list[Sample], phases: list[tuple[str, float, float]],
                        net_energy_j: float | None = None) -> tuple[list[str], dict[str, Any]]:
        """Flags for one cycle (coverage, gaps, temperature drift, throttling, neighbours,
        counter vs power cross-check) and the columns that back them."""
        from llm_energy.telemetry.meters.nvml import POWER_CAP_REASON, THROTTLE_REASONS, other_processes

        warnings: list[str] = []
        period_s = 1.0 / self.measurement["sampler_hz"]
        in_cycle = [s for s in samples if start_s <= s.t_s <= end_s]
        warnings.extend(self._phase_sample_warnings(samples, [phases[-1]]))
        for device in sorted({s.device for s in samples}):
            # A GPU sample whose power read failed (NVML error) is a gap for this purpose.
            times = [s.t_s for s in in_cycle if s.device == device
                     and (s.power_w is not None or not device.startswith("gpu"))]
            cover = metrics.coverage(times, start_s, end_s, period_s)
            if cover < 0.95:
                warnings.append(f"telemetry of {device} covers {cover:.0%} of cycle {cycle} "
                                f"(< 95%; longest gap {metrics.max_gap_s(times, start_s, end_s):.2f} s)")
        drift_c = float(self.measurement.get("temperature_drift_c", 10.0))
        gpu_labels = [g.label for g in self.detection.gpus]
        integral_j: float | None = None
        for label in gpu_labels:
            mine = [s for s in in_cycle if s.device == label]
            temps = [s.temperature_c for s in mine if s.temperature_c is not None]
            if temps and max(temps) - min(temps) > drift_c:
                warnings.append(f"{label} temperature drifted {min(temps):.0f}->{max(temps):.0f} "
                                f"degC within cycle {cycle} (> {drift_c:g})")
            if temps:
                first = self._first_cycle_temp.setdefault(label, temps[0])
                if abs(temps[0] - first) > drift_c:
                    warnings.append(f"{label} started cycle {cycle} at {temps[0]:.0f} degC vs "
                                    f"{first:.0f} degC for the first cycle (> {drift_c:g})")
            reasons = [s.throttle_reasons for s in mine if s.throttle_reasons is not None]
            if reasons:
                hit = {name for bit, name in THROTTLE_REASONS.items()
                       for r in reasons if r & bit}
                throttled = sum(1 for r in reasons if any(r & bit for bit in THROTTLE_REASONS))
                if throttled:
                    warnings.append(f"{label} throttled ({', '.join(sorted(hit))}) in "
                                    f"{throttled}/{len(reasons)} samples of cycle {cycle}")
                capped = [s for s in mine
                          if s.throttle_reasons is not None and s.throttle_reasons & POWER_CAP_REASON]
                if capped:
                    # NVML sets this bit whenever power management lowers clocks, which on
                    # H100 happens in short bursts far below the board limit: give the power
                    # the GPU drew in those samples so a reader does not assume it sat at it.
                    watts = [s.power_w for s in capped if s.power_w is not None]
                    drawn = (f" while drawing {min(watts):.0f}-{max(watts):.0f} W" if watts else "")
                    warnings.append(f"{label}: NVML reported clocks lowered by power management "
                                    f"(sw power cap) in {len(capped)}/{len(reasons)} samples of "
                                    f"cycle {cycle}{drawn}")
        if gpu_labels:
            profiles = [[(s.t_s, s.power_w) for s in samples
                         if s.device == label and s.power_w is not None
                         and start_s - 2 * period_s <= s.t_s <= end_s + 2 * period_s]
                        for label in gpu_labels]
            if all(len(p) >= 2 for p in profiles):
                integral_j = sum(metrics.integrate_power(p, start_s, end_s) for p in profiles)
            counter_j = window.energy_j.get("gpu")
            if (window.source.get("gpu") == "nvml-counter" and counter_j and integral_j
                    and window.duration_s >= 5.0
                    and abs(integral_j - counter_j) > POWER_CROSSCHECK_TOLERANCE * counter_j):
                warnings.append(f"gpu energy counter ({counter_j:.1f} J) and integrated NVML power "
                                f"({integral_j:.1f} J) disagree by more than "
                                f"{POWER_CROSSCHECK_TOLERANCE:.0%} in cycle {cycle}")
        if self.detection.nvml is not None and self.detection.gpus:
            others = other_processes(self.detection.nvml, self.detection.gpus, self._own_pids())
            if others:
                warnings.append(f"other processes on the device after cycle {cycle}: "
                                + "; ".join(others))
        if net_energy_j is not None and net_energy_j < 0:
            # Kept as measured (total - idle x duration) so that it can be averaged, but it
            # is not an energy: the idle baseline was as high as the loaded draw.
            warnings.append(f"net energy negative ({net_energy_j:.3g} J) in cycle {cycle}: the "
                            "idle baseline is as high as the loaded power (busy machine or a "
                            "noisy baseline); net_energy_j is not meaningful here")
        temps0 = [t for t in self.preflight_temperature_c.values() if t is not None]
        columns = {"idle_baseline": getattr(self, "idle_baseline", None),
                   "gpu_power_integral_j": integral_j,
                   "preflight_temperature_c": max(temps0) if temps0 else None}
        return warnings, columns

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
        limit = batch_limit(self.config["backend"], self.settings, self.workload)
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
            # Relative to the cycle start, like the request times in requests.parquet.
            "steady_state_start_s": None if steady is None else steady.start_s - start_s,
            "steady_state_end_s": None if steady is None else steady.end_s - start_s,
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
        gaps_ms = [x for r in ok for x in metrics.itl_ms(r)]
        bundled = sum(1 for gap in gaps_ms if gap == 0.0)
        if bundled:
            warnings.append(
                f"{bundled} of {len(gaps_ms)} inter-token gaps in cycle {cycle} are 0 ms: tokens "
                "arrived several to a streamed chunk, which client timing cannot separate; the "
                "ITL percentiles include these zeros, TPOT and end-to-end latency do not depend "
                "on them")
        for name, values in (("ttft", [metrics.ttft_ms(r) for r in ok]),
                             ("itl", gaps_ms),
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
