"""The NVML reads Zeus 0.16's device layer lacks: the one module of llm_energy that imports
`pynvml` (tests/test_architecture.py checks). Everything else about NVIDIA GPUs goes through
Zeus's GPU objects (`telemetry/nvidia.py`): energy counter, power, temperature, name, power
limit and its constraints, supported clocks, and every setter.

What Zeus 0.16 (`zeus.device.gpu.nvidia.NVIDIAGPU`) has no getter for, and why we need it:

- device count, handles by index/UUID, UUIDs and MIG instances (`nvmlDeviceGetCount`,
  `...HandleByIndex/ByUUID`, `...GetUUID`, `...GetMigDeviceHandleByIndex`, ...): mapping
  `CUDA_VISIBLE_DEVICES` (UUIDs, UUID prefixes, MIG ids) to the NVML indices Zeus `int()`s
  (`meters/gpu_ids.py`), and a stable name per GPU for locks, markers and the idle cache;
- current SM and memory clocks (`nvmlDeviceGetClockInfo`) and clock-event (throttle) reasons
  (`nvmlDeviceGetCurrentClocksEventReasons`): read-back of the clock axes, throttling flags;
- utilisation and memory in use (`nvmlDeviceGetUtilizationRates`, `...GetMemoryInfo`): the
  time series; total memory, driver and CUDA driver versions: provenance;
- compute processes (`nvmlDeviceGetComputeRunningProcesses`): other jobs on the GPU;
- `nvmlDeviceGetPowerUsage` and `nvmlDeviceGetTemperature`, only as fallbacks: Zeus reads
  power through NVML field values (`NVML_FI_DEV_POWER_INSTANT`, drivers >= 530) and the
  temperature through `nvmlDeviceGetTemperatureV` (recent drivers), which older drivers lack.

All of them are read-only and take the handle of Zeus's own GPU object (`gpus.gpus[i].handle`)
or the module returned by `load_nvml`; the module is passed in (`nvml=`) so tests drive every
path with a fake. No NVML setter is written here or anywhere else in llm_energy."""

from __future__ import annotations

from typing import Any


class NoGpus(RuntimeError):
    """No NVIDIA GPU visible to this job (or NVML absent)."""


def load_nvml() -> Any:
    """The initialised pynvml module (nvidia-ml-py, a dependency of Zeus), or NoGpus."""
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency of zeus
        raise NoGpus("nvidia-ml-py is not installed") from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded on CPU machines
        raise NoGpus(f"NVML unavailable: {exc}") from exc
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def uuid(nvml: Any, handle: Any) -> str:
    return _text(nvml.nvmlDeviceGetUUID(handle))


def clock_mhz(nvml: Any, handle: Any, which: str) -> float:
    """The current clock, MHz: `which` is 'sm' or 'mem'."""
    kind = getattr(nvml, "NVML_CLOCK_SM" if which == "sm" else "NVML_CLOCK_MEM")
    return float(nvml.nvmlDeviceGetClockInfo(handle, kind))


def clock_event_bits(nvml: Any, handle: Any) -> int | None:
    """NVML clock-event (throttle) reason bits; None where the query fails."""
    for name in ("nvmlDeviceGetCurrentClocksEventReasons",
                 "nvmlDeviceGetCurrentClocksThrottleReasons"):  # the pre-12.2 name
        fn = getattr(nvml, name, None)
        if fn is not None:
            try:
                return int(fn(handle))
            except Exception:
                return None
    return None


def utilization_pct(nvml: Any, handle: Any) -> float:
    return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)


def memory_used_mb(nvml: Any, handle: Any) -> float:
    return nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20


def memory_total_mb(nvml: Any, handle: Any) -> float:
    return nvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20


def compute_processes(nvml: Any, handle: Any) -> list[Any]:
    """Compute processes on the device (objects with `pid`, `usedGpuMemory` in bytes)."""
    return list(nvml.nvmlDeviceGetComputeRunningProcesses(handle))


def power_usage_mw(nvml: Any, handle: Any) -> float:
    """Fallback for drivers without NVML's power field values (see the module docstring)."""
    return float(nvml.nvmlDeviceGetPowerUsage(handle))


def temperature_c(nvml: Any, handle: Any) -> float:
    """Fallback for drivers without `nvmlDeviceGetTemperatureV`."""
    return float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))


def driver_versions(nvml: Any) -> tuple[str | None, str | None]:
    """(driver version, CUDA version the driver supports as 'major.minor'); None if unknown."""
    try:
        driver: str | None = _text(nvml.nvmlSystemGetDriverVersion())
    except Exception:
        driver = None
    try:
        cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
        cuda_text: str | None = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None
    except Exception:
        cuda_text = None
    return driver, cuda_text


def device_count(nvml: Any) -> int:
    return int(nvml.nvmlDeviceGetCount())


def handle_by_index(nvml: Any, index: int) -> Any:
    return nvml.nvmlDeviceGetHandleByIndex(index)
