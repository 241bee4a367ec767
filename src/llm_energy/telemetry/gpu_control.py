"""GPU power limit and locked clocks as measurement settings: checked, applied, read back and
always restored, through Zeus's device layer (`zeus.device.get_gpus()`).

Zeus sends the setters to the `zeusd` daemon when `ZEUSD_SOCK_PATH` is set (no root needed) and
to NVML otherwise (root / CAP_SYS_ADMIN). Calls used (Zeus 0.16, `zeus.device.gpu.common.GPUs`,
all taking the job-relative GPU index first): `get_power_management_limit_constraints` (mW),
`get_power_management_limit` (mW), `set_power_management_limit` (mW),
`reset_power_management_limit`, `get_supported_memory_clocks` (MHz),
`get_supported_graphics_clocks(memory_clock_mhz=...)` (MHz), `set_memory_locked_clocks`,
`reset_memory_locked_clocks`, `set_gpu_locked_clocks`, `reset_gpu_locked_clocks`.

Zeus 0.16 has no getter for the current SM/memory clocks, clock-event (throttle) reasons nor
UUIDs, so those are read with the NVML getters of `nvml_getters.py` on the handle of Zeus's own
GPU object (`gpus.gpus[i].handle`): read-only, no NVML setter is written anywhere. The manager
is the one the meters read (`nvidia.open_zeus`, given NVML indices mapped from
`CUDA_VISIBLE_DEVICES`; a MIG slice's parent GPU).

Restoring is layered so that a GPU is never left capped:
1. the cell resets what it set in a `finally` (normal end, exception);
2. before setting anything it writes a marker file per GPU (`<state_dir>/<gpu ident>.json`,
   naming the knobs, the process id and the host); a marker is removed only once every knob
   it names has been reset;
3. the parent runner, when the measuring child died (timeout, SIGKILL, crash), resets the
   knobs named in the markers that child left (`restore_from_markers(..., pid=child_pid)`);
4. the next cell on that GPU restores from any marker left before it measures.
Each cell holds a lock file per GPU (`<ident>.lock`) for its whole run: exclusive when it
changes settings, shared otherwise, so no cell is measured while another changes its GPU."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_energy.telemetry.gpu_readback import (  # noqa: F401 - re-exported
    CLOCK_EVENT_REASONS,
    CLOCK_TOLERANCE_MHZ,
    _nvml,
    cycle_readings,
    mismatches,
    read_back,
    reason_names,
    run_columns,
)
from llm_energy.telemetry.gpu_state import (
    GpuControlError,
    GpuLocks,
    _marker,
    _reset,
    pending_markers,
    restore_from_markers,
)

#: Where markers and locks live unless told otherwise (relative to the working directory).
DEFAULT_STATE_DIR = "results/.gpu-control"

ZEUSD_HINT = (
    "changing GPU power limits and clocks needs root (CAP_SYS_ADMIN) or the Zeus daemon: "
    "have an administrator run it on the node (`cargo install zeusd`, then `sudo zeusd serve "
    "--socket-path /run/zeusd/zeusd.sock --socket-permissions 666`) and set "
    "ZEUSD_SOCK_PATH=/run/zeusd/zeusd.sock for the job (docs/methodology.md, GPU power and clocks)")

class OutOfRange(GpuControlError):
    """An asked value lies outside what the device allows (the message gives the range)."""


class NoPermission(GpuControlError):
    """The process may not change GPU settings (the message says how to run zeusd)."""


# ------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ClockRange:
    """A locked clock, MHz: min == max for one locked value."""

    min_mhz: int
    max_mhz: int

    @classmethod
    def parse(cls, value: Any) -> ClockRange | None:
        """None, an int (locked value), [min, max] or {'min_mhz', 'max_mhz'}; ValueError else."""
        if value is None:
            return None
        if isinstance(value, ClockRange):
            return value
        if isinstance(value, Mapping):
            low, high = value.get("min_mhz"), value.get("max_mhz")
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            low, high = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            low = high = value
        else:
            raise ValueError(f"a clock is a number of MHz or [min, max], not {value!r}")
        if low is None or high is None or int(low) <= 0 or int(low) > int(high):
            raise ValueError(f"clock range {value!r}: need 0 < min <= max (MHz)")
        return cls(int(low), int(high))

    def __str__(self) -> str:
        return str(self.min_mhz) if self.min_mhz == self.max_mhz else f"{self.min_mhz}-{self.max_mhz}"

    def contains(self, mhz: float, tolerance: float = CLOCK_TOLERANCE_MHZ) -> bool:
        return self.min_mhz - tolerance <= mhz <= self.max_mhz + tolerance


@dataclass(frozen=True)
class GpuSettings:
    """What a cell asks of each of its GPUs; None: left as the node has it."""

    power_limit_w: float | None = None
    sm_clock: ClockRange | None = None
    memory_clock: ClockRange | None = None

    #: Measurement keys → fields (the config axes).
    KEYS = ("gpu_power_limit_w", "gpu_sm_clock_mhz", "gpu_memory_clock_mhz")

    @classmethod
    def from_measurement(cls, measurement: Mapping[str, Any]) -> GpuSettings:
        power = measurement.get("gpu_power_limit_w")
        return cls(None if power is None else float(power),
                   ClockRange.parse(measurement.get("gpu_sm_clock_mhz")),
                   ClockRange.parse(measurement.get("gpu_memory_clock_mhz")))

    @property
    def empty(self) -> bool:
        return self.power_limit_w is None and self.sm_clock is None and self.memory_clock is None

    def knobs(self) -> list[str]:
        return [k for k, v in (("power_limit", self.power_limit_w), ("sm_clock", self.sm_clock),
                               ("memory_clock", self.memory_clock)) if v is not None]

    def columns(self) -> dict[str, Any]:
        """The asked values as run-row setting columns (only those set): power W, clocks
        as '1410' or '1200-1410' MHz."""
        return {k: v for k, v in (("gpu_power_limit_w", self.power_limit_w),
                                  ("gpu_sm_clock_mhz", self.sm_clock and str(self.sm_clock)),
                                  ("gpu_memory_clock_mhz",
                                   self.memory_clock and str(self.memory_clock))) if v is not None}

    def describe(self) -> str:
        parts = [*([f"power limit {self.power_limit_w:g} W"] if self.power_limit_w is not None else []),
                 *([f"SM clock {self.sm_clock} MHz"] if self.sm_clock else []),
                 *([f"memory clock {self.memory_clock} MHz"] if self.memory_clock else [])]
        return ", ".join(parts) or "defaults"


# ------------------------------------------------------------------------------- Zeus access


def zeus_visible_devices(environ: Mapping[str, str] | None = None, nvml: Any = None) -> str | None:
    """CUDA_VISIBLE_DEVICES as the NVML indices Zeus is given (it `int()`s every entry): UUIDs,
    UUID prefixes and MIG ids mapped by CUDA's rules (`meters.gpu_ids`; a MIG slice gives its
    parent GPU, each GPU once), or None when the variable is unset. GpuIdError / NoGpus when an
    entry names no GPU."""
    from llm_energy.telemetry.meters.gpu_ids import job_gpus, parse_visible_devices
    from llm_energy.telemetry.nvidia import zeus_indices

    env = os.environ if environ is None else environ
    if env.get("CUDA_VISIBLE_DEVICES") is None:
        return None
    ids = parse_visible_devices(dict(env)).ids
    return ",".join(str(i) for i in zeus_indices(job_gpus(nvml or _nvml(), ids)))


def zeus_gpus() -> Any:
    """Zeus's GPU manager for this job's GPUs (respects CUDA_VISIBLE_DEVICES, given to Zeus as
    NVML indices, see `zeus_visible_devices`; uses zeusd when ZEUSD_SOCK_PATH is set); without
    NVML, Zeus's own choice (`get_gpus()`: AMD GPUs). GpuControlError when Zeus cannot reach
    NVML or zeusd, or an entry names no GPU."""
    from llm_energy.telemetry.meters.gpu_ids import NoGpus
    from llm_energy.telemetry.nvidia import open_zeus

    try:
        try:
            mapped = zeus_visible_devices()
        except NoGpus:  # no NVML: Zeus's own choice (AMD GPUs through amdsmi)
            from zeus.device import get_gpus

            return get_gpus()
        return open_zeus(range(_device_count()) if mapped is None
                         else [int(i) for i in mapped.split(",")])
    except Exception as exc:  # ZeusGPUInitError (no NVML, zeusd unreachable or not allowed)
        via = (f"zeusd at ZEUSD_SOCK_PATH={os.environ['ZEUSD_SOCK_PATH']}"
               if os.environ.get("ZEUSD_SOCK_PATH") else "NVML")
        raise GpuControlError(f"cannot open the GPUs through Zeus ({via}): "
                              f"{type(exc).__name__}: {exc}") from exc


def _device_count() -> int:
    from llm_energy.telemetry.nvml_getters import device_count

    return device_count(_nvml())


def _is_permission_error(exc: BaseException) -> bool:
    try:
        from zeus.device.exception import ZeusdError
        from zeus.device.gpu import ZeusGPUNoPermissionError
    except ImportError:  # pragma: no cover - zeus is a dependency
        return False
    return isinstance(exc, (ZeusGPUNoPermissionError, ZeusdError))


def gpu_idents(gpus: Any, nvml: Any = None) -> list[str]:
    """A stable name per GPU of the manager (NVML UUID; 'nvml<index>@host' without one)."""
    out = []
    from llm_energy.telemetry.nvml_getters import uuid

    for gpu in gpus.gpus:
        try:
            nvml = nvml or _nvml()
            out.append(uuid(nvml, gpu.handle))
        except Exception:
            out.append(f"nvml{getattr(gpu, 'gpu_index', len(out))}@{socket.gethostname()}")
    return out


@dataclass(frozen=True)
class Limits:
    """What one GPU allows: power limit W, graphics and memory clocks MHz (min, max)."""

    power_limit_w: tuple[float, float]
    sm_clock_mhz: tuple[int, int] | None
    memory_clock_mhz: tuple[int, int] | None


def device_limits(gpus: Any, index: int, settings: GpuSettings) -> Limits:
    low_mw, high_mw = gpus.get_power_management_limit_constraints(index)
    memory = sm = None
    if settings.memory_clock is not None or settings.sm_clock is not None:
        mem_clocks = sorted(int(c) for c in gpus.get_supported_memory_clocks(index))
        memory = (mem_clocks[0], mem_clocks[-1]) if mem_clocks else None
        if settings.sm_clock is not None:
            at = settings.memory_clock.max_mhz if settings.memory_clock else (memory or (0, 0))[1]
            sm_clocks = sorted(int(c) for c in gpus.get_supported_graphics_clocks(
                index, memory_clock_mhz=at))
            sm = (sm_clocks[0], sm_clocks[-1]) if sm_clocks else None
    return Limits((low_mw / 1000.0, high_mw / 1000.0), sm, memory)


def check(settings: GpuSettings, limits: Limits, label: str) -> list[str]:
    """One line per asked value outside the device's range, naming the allowed range."""
    errors = []
    if settings.power_limit_w is not None:
        low, high = limits.power_limit_w
        if not low <= settings.power_limit_w <= high:
            errors.append(f"measurement.gpu_power_limit_w={settings.power_limit_w:g} W is outside "
                          f"{label}'s allowed range {low:g}-{high:g} W")
    for key, asked, allowed in (("gpu_sm_clock_mhz", settings.sm_clock, limits.sm_clock_mhz),
                                ("gpu_memory_clock_mhz", settings.memory_clock,
                                 limits.memory_clock_mhz)):
        if asked is None:
            continue
        if allowed is None:
            errors.append(f"measurement.{key}={asked}: {label} reports no supported clocks")
        elif asked.min_mhz < allowed[0] or asked.max_mhz > allowed[1]:
            errors.append(f"measurement.{key}={asked} MHz is outside {label}'s supported range "
                          f"{allowed[0]}-{allowed[1]} MHz")
    return errors


# ------------------------------------------------------------------------------- controller


class GpuControl:
    """Apply, read back and restore one cell's GPU settings on the job's GPUs.

    `gpus`: Zeus's manager (`zeus_gpus()`, or a fake with its interface); `idents`: one stable
    name per GPU in the manager's order (`gpu_idents`); `nvml`: the module used for the
    read-only clock and throttle getters (pynvml by default)."""

    def __init__(self, gpus: Any, idents: Sequence[str], settings: GpuSettings,
                 state_dir: str | os.PathLike = DEFAULT_STATE_DIR, nvml: Any = None,
                 log: Callable[[str], None] = print) -> None:
        self.gpus, self.idents, self.settings = gpus, list(idents), settings
        self.state_dir, self.nvml, self.log = Path(state_dir), nvml, log
        self.applied = False

    def labels(self) -> list[str]:
        return [f"gpu{i} ({ident})" for i, ident in enumerate(self.idents)]

    def validate(self) -> None:
        """OutOfRange naming each asked value outside a GPU's allowed range."""
        errors = []
        for index, label in enumerate(self.labels()):
            errors.extend(check(self.settings, device_limits(self.gpus, index, self.settings), label))
        if errors:
            raise OutOfRange("; ".join(errors))

    def apply(self) -> None:
        """Restore what an earlier crashed cell left, check, write markers, then set (memory
        clock, SM clock, power limit). On any failure what was set is reset before raising;
        a permission failure raises NoPermission with how to run zeusd."""
        leftovers = restore_from_markers(self.state_dir, self.gpus, self.idents, log=self.log)
        if leftovers:
            raise GpuControlError("settings left by an earlier cell could not be reset: "
                                  + "; ".join(leftovers))
        if self.settings.empty:
            return
        self.validate()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        marker = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                  "knobs": self.settings.knobs(), "settings": self.settings.describe()}
        for ident in self.idents:
            _marker(self.state_dir, ident).write_text(json.dumps(marker))
        self.applied = True
        s = self.settings
        try:
            for index in range(len(self.idents)):
                if s.memory_clock is not None:
                    self.gpus.set_memory_locked_clocks(index, s.memory_clock.min_mhz,
                                                       s.memory_clock.max_mhz)
                if s.sm_clock is not None:
                    self.gpus.set_gpu_locked_clocks(index, s.sm_clock.min_mhz, s.sm_clock.max_mhz)
                if s.power_limit_w is not None:
                    self.gpus.set_power_management_limit(index, round(s.power_limit_w * 1000))
        except BaseException as exc:
            failures = self.restore()
            extra = f" (and restoring failed: {'; '.join(failures)})" if failures else ""
            if _is_permission_error(exc):
                raise NoPermission(f"cannot set {s.describe()}: {type(exc).__name__}: {exc}; "
                                   f"{ZEUSD_HINT}{extra}") from exc
            if isinstance(exc, Exception):
                raise GpuControlError(f"cannot set {s.describe()}: {type(exc).__name__}: "
                                      f"{exc}{extra}") from exc
            raise
        self.log(f"GPU settings applied on {', '.join(self.labels())}: {s.describe()}")

    def restore(self) -> list[str]:
        """Reset the knobs this cell set; one line per failure (markers stay for those)."""
        if not self.applied:
            return []
        failures = []
        for index, ident in enumerate(self.idents):
            failed = _reset(self.gpus, index, self.settings.knobs())
            failures.extend(f"GPU {ident}: {line}" for line in failed)
            if not failed:
                _marker(self.state_dir, ident).unlink(missing_ok=True)
        self.applied = bool(failures)
        if not failures:
            self.log(f"GPU settings restored on {', '.join(self.labels())}")
        return failures

    def read_back(self) -> list[dict[str, Any]]:
        """Per GPU now: enforced power limit W, SM and memory clocks MHz, clock-event bits."""
        return read_back(self.gpus, self.nvml)


def restore_after_child(measurement: Mapping[str, Any], pid: int,
                        log: Callable[[str], None] = print) -> list[str]:
    """For the parent runner once its measuring child `pid` has ended: reset the knobs named
    in the markers that child left (it died before its own `finally`). Opens the GPUs only
    when such a marker exists; returns one line per knob that could not be reset."""
    if measurement.get("device") != "cuda":
        return []
    state = Path(measurement.get("gpu_state_dir", DEFAULT_STATE_DIR))
    left = pending_markers(state, pid=pid)
    if not left:
        return []
    try:
        # Under the GPUs' exclusive locks, so that a cell that took the GPU meanwhile (and
        # restored this marker itself) is never undone; then only markers still naming `pid`.
        with GpuLocks(state, [p.stem for p in left], exclusive=True):
            if not pending_markers(state, pid=pid):
                return []
            gpus = zeus_gpus()
            return restore_from_markers(state, gpus, gpu_idents(gpus), pid=pid, log=log)
    except GpuControlError as exc:
        if not pending_markers(state, pid=pid):  # the next cell restored them
            return []
        return [f"cannot restore the GPU settings of process {pid}: {exc}"]
