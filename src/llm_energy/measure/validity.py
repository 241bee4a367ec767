"""Validity checks of a cell's measurement: preflight (other processes on the device,
temperature), per-phase sampling coverage, and per-cycle checks (window length against the
sensor's resolution, power cross-check, throttling, other processes on the GPU and the CPU).
Mixed into `CellRunner`; the cell-level rules (repetitions, stopping, stationarity) are in
`gate.py`."""

from __future__ import annotations

import time
from typing import Any

from llm_energy.measure import gate, metrics
from llm_energy.telemetry.meters import WindowEnergy
from llm_energy.telemetry.sampler import Sample

#: Counter and integrated power of the same GPU window disagreeing by more than this share is
#: flagged (windows >= 5 s; NVML power is itself averaged over up to 1 s on some GPUs).
POWER_CROSSCHECK_TOLERANCE = 0.25


class ValidityChecks:
    """Checks that read the runner's state (`self.device`, `self.meter`, samples)."""

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
        nvidia = self.detection.nvidia
        if nvidia is None or not nvidia.gpus:
            return []
        from llm_energy.telemetry.meters.nvml import other_processes, temperatures_c

        warnings = []
        others = other_processes(nvidia, self._own_pids())
        if others:
            warnings.append("other processes on the device at preflight: " + "; ".join(others))
        self.preflight_temperature_c = temperatures_c(nvidia)
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
                        net_energy_j: float | None = None,
                        other_cpu_s: float | None = None) -> tuple[list[str], dict[str, Any]]:
        """Flags for one cycle (coverage, gaps, temperature drift, throttling, neighbours on
        the GPU and on the CPU, counter vs power cross-check) and the columns that back them.
        `other_cpu_s`: CPU seconds used by processes outside the cell's tree in the window."""
        from llm_energy.telemetry.meters.nvml import (
            POWER_CAP_REASON,
            THROTTLE_REASONS,
            other_processes,
        )

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
        drift_c = float(self.measurement["temperature_drift_c"])
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
        if self.detection.nvidia is not None and self.detection.gpus:
            others = other_processes(self.detection.nvidia, self._own_pids())
            if others:
                warnings.append(f"other processes on the device after cycle {cycle}: "
                                + "; ".join(others))
        contention = gate.contention_warning(
            cycle, other_cpu_s, end_s - start_s,
            float(self.measurement.get("contention_cpu_cores", 0.25)))
        if contention:
            warnings.append(contention)
        if net_energy_j is not None and net_energy_j < 0:
            # Kept as measured (total - idle x duration) so that it can be averaged, but it
            # is not an energy: the idle baseline was as high as the loaded draw.
            warnings.append(f"net energy negative ({net_energy_j:.3g} J) in cycle {cycle}: the "
                            "idle baseline is as high as the loaded power (busy machine or a "
                            "noisy baseline); net_energy_j is not meaningful here")
        temps0 = [t for t in self.preflight_temperature_c.values() if t is not None]
        columns = {"idle_baseline": getattr(self, "idle_baseline", None),
                   "other_processes_cpu_s": other_cpu_s,
                   "gpu_power_integral_j": integral_j,
                   "preflight_temperature_c": max(temps0) if temps0 else None,
                   "gpu_mig_whole_gpu": (self.detection.nvidia.mig
                                         if self.detection.nvidia is not None else None)}
        return warnings, columns
