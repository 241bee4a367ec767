"""Reading back what a GPU enforces (power limit, SM and memory clocks, clock-event reasons)
and comparing it with what a cell asked (see gpu_control.py).

Zeus 0.16 offers `get_power_management_limit` but no getter for current clocks or clock-event
reasons, so those are read with the NVML getters of `nvml_getters.py` (read-only) on the handle
of Zeus's GPU object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llm_energy.telemetry import nvml_getters as ng

if TYPE_CHECKING:
    from llm_energy.telemetry.gpu_control import GpuSettings

#: Read-back tolerances: NVML stores power limits in mW (drivers round to whole W on some
#: GPUs); graphics clocks move in ~15 MHz steps.
POWER_TOLERANCE_W = 1.0
CLOCK_TOLERANCE_MHZ = 15.0

#: NVML clock-event (throttle) reason bits, nvmlClocksEventReason* in nvml.h.
CLOCK_EVENT_REASONS = {
    0x001: "gpu idle", 0x002: "applications clocks setting", 0x004: "sw power cap",
    0x008: "hw slowdown", 0x010: "sync boost", 0x020: "sw thermal", 0x040: "hw thermal",
    0x080: "hw power brake", 0x100: "display clock setting",
}


def reason_names(bits: int | None) -> list[str]:
    """['sw power cap', ...] for an NVML clock-event bit mask; [] for 0 or None."""
    if not bits:
        return []
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if bits & bit]
    unknown = bits & ~sum(CLOCK_EVENT_REASONS)
    return [*names, *([f"0x{unknown:x}"] if unknown else [])]



def read_back(gpus: Any, nvml: Any = None) -> list[dict[str, Any]]:
    """Per GPU of Zeus's manager: `power_limit_w` (Zeus `get_power_management_limit`, mW → W),
    `sm_clock_mhz` / `memory_clock_mhz` (NVML `nvmlDeviceGetClockInfo` on the GPU object's
    handle) and `throttle_reasons` (clock-event bits); None where a reading fails. `nvml`:
    the module for the getters Zeus lacks (`nvml_getters.load_nvml()` by default)."""
    out = []
    for index, gpu in enumerate(gpus.gpus):
        row: dict[str, Any] = {"gpu": f"gpu{index}"}
        try:
            row["power_limit_w"] = gpus.get_power_management_limit(index) / 1000.0
        except Exception:
            row["power_limit_w"] = None
        try:
            nvml = nvml or _nvml()
        except Exception:  # NoGpus: no NVML getters (an AMD GPU through Zeus)
            nvml = None
        for key, which in (("sm_clock_mhz", "sm"), ("memory_clock_mhz", "mem")):
            try:
                row[key] = ng.clock_mhz(nvml, gpu.handle, which)
            except Exception:
                row[key] = None
        row["throttle_reasons"] = ng.clock_event_bits(nvml, gpu.handle) if nvml else None
        out.append(row)
    return out


def _nvml() -> Any:
    return ng.load_nvml()


def mismatches(settings: GpuSettings, readings: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per GPU reading that differs from what was asked: a power limit more than
    POWER_TOLERANCE_W away, a clock outside the locked range ± CLOCK_TOLERANCE_MHZ (with the
    clock-event reasons that were active, which explain a clock held below its range)."""
    out = []
    for r in readings:
        label = r.get("gpu", "gpu")
        if settings.power_limit_w is not None:
            got = r.get("power_limit_w")
            if got is None or abs(got - settings.power_limit_w) > POWER_TOLERANCE_W:
                out.append(f"{label}: power limit read back "
                           f"{'n/a' if got is None else f'{got:g} W'}, asked {settings.power_limit_w:g} W")
        for name, asked, key in (("SM clock", settings.sm_clock, "sm_clock_mhz"),
                                 ("memory clock", settings.memory_clock, "memory_clock_mhz")):
            got = r.get(key)
            low, high = ((asked.min_mhz - CLOCK_TOLERANCE_MHZ, asked.max_mhz + CLOCK_TOLERANCE_MHZ)
                         if asked is not None else (0, 0))
            if asked is None or (got is not None and low <= got <= high):
                continue
            reasons = reason_names(r.get("throttle_reasons"))
            why = f" (clock events: {', '.join(reasons)})" if reasons else ""
            out.append(f"{label}: {name} read back {'n/a' if got is None else f'{got:g} MHz'}, "
                       f"asked {asked} MHz{why}")
    return out


def cycle_readings(readings: Sequence[Mapping[str, Any]], samples: Sequence[Any],
                   start_s: float, end_s: float) -> list[dict[str, Any]]:
    """The read-back of one cycle: clocks as the median of the sampler's readings of each GPU
    inside [start_s, end_s] (a read after the workload may see idle clocks), clock-event bits
    OR-ed over them; the point reading where the cycle has no sample."""
    import statistics

    out = []
    for r in readings:
        row = dict(r)
        inside = [s for s in samples if getattr(s, "device", None) == r.get("gpu")
                  and start_s <= s.t_s <= end_s]
        for key in ("sm_clock_mhz", "memory_clock_mhz"):
            values = [getattr(s, key) for s in inside if getattr(s, key, None) is not None]
            if values:
                row[key] = float(statistics.median(values))
        bits = [s.throttle_reasons for s in inside if getattr(s, "throttle_reasons", None) is not None]
        if bits:
            row["throttle_reasons"] = _or(bits)
        out.append(row)
    return out


def _or(values: Sequence[int]) -> int:
    total = 0
    for v in values:
        total |= int(v)
    return total


def run_columns(settings: GpuSettings, readings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Columns of a cycle's row: read-back values (mean over the cell's GPUs), the clock-event
    reasons seen, and `gpu_settings_mismatch` (None when nothing was asked)."""
    def mean(key: str) -> float | None:
        values = [r[key] for r in readings if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    bits = _or([r["throttle_reasons"] for r in readings if r.get("throttle_reasons") is not None])
    return {"gpu_power_limit_read_w": mean("power_limit_w"),
            "gpu_sm_clock_read_mhz": mean("sm_clock_mhz"),
            "gpu_memory_clock_read_mhz": mean("memory_clock_mhz"),
            "gpu_throttle_reasons": reason_names(bits),
            "gpu_settings_mismatch": None if settings.empty else bool(mismatches(settings, readings))}
