"""Fakes of hardware interfaces for unit tests: an NVML module, Zeus's NVIDIA GPU manager over
it, and a powercap tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

# Imported before any test swaps `pynvml` in sys.modules for a fake.
from zeus.device.gpu import ZeusGPUUnknownError


class FakeNVMLError(Exception):
    pass


@dataclass
class FakeGpu:
    uuid: str
    energy_mj: list[int] = field(default_factory=list)   # successive counter readings
    power_mw: float = 200_000.0
    temperature_c: float = 40.0
    throttle: int = 0
    processes: list[int] = field(default_factory=list)
    fail_energy_at: set[int] = field(default_factory=set)   # read numbers that raise
    supports_counter: bool = True
    reads: int = 0
    migs: list[FakeGpu] = field(default_factory=list)     # MIG instances of this GPU
    instance_ids: tuple[int, int] | None = None             # (GPU, compute instance) of a MIG
    parent: FakeGpu | None = None


class FakeNvml:
    """The subset of pynvml the project uses. Energy readings are scripted per GPU; once the
    script is exhausted the last value repeats (a stalled counter)."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.by_uuid = {g.uuid: g for g in gpus}
        for gpu in gpus:
            for mig in gpu.migs:
                mig.parent = gpu
                self.by_uuid[mig.uuid] = mig
        self.handles_asked: list[object] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetIndex(self, gpu: FakeGpu) -> int:
        return self.gpus.index(gpu)

    def nvmlDeviceGetMaxMigDeviceCount(self, gpu: FakeGpu) -> int:
        if gpu.parent is not None:
            raise FakeNVMLError("Invalid Argument")
        return 7 if gpu.migs else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, gpu: FakeGpu, index: int) -> FakeGpu:
        if index >= len(gpu.migs):
            raise FakeNVMLError("Not Found")
        return gpu.migs[index]

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, mig: FakeGpu) -> FakeGpu:
        if mig.parent is None:
            raise FakeNVMLError("Invalid Argument")
        return mig.parent

    def nvmlDeviceGetGpuInstanceId(self, mig: FakeGpu) -> int:
        if mig.instance_ids is None:
            raise FakeNVMLError("Invalid Argument")
        return mig.instance_ids[0]

    def nvmlDeviceGetComputeInstanceId(self, mig: FakeGpu) -> int:
        if mig.instance_ids is None:
            raise FakeNVMLError("Invalid Argument")
        return mig.instance_ids[1]

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if index >= len(self.gpus):
            raise FakeNVMLError("Invalid Argument")
        self.handles_asked.append(index)
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        # Real NVML matches whole UUIDs only: a prefix is "Not Found".
        if uuid not in self.by_uuid:
            raise FakeNVMLError("Not Found")
        self.handles_asked.append(uuid)
        return self.by_uuid[uuid]

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return gpu.uuid

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        if not gpu.supports_counter:
            raise FakeNVMLError("Not Supported")
        n = gpu.reads
        gpu.reads += 1
        if n in gpu.fail_energy_at:
            raise FakeNVMLError("GPU is lost")
        return gpu.energy_mj[min(n, len(gpu.energy_mj) - 1)]

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> float:
        return gpu.power_mw

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, kind: int) -> float:
        return gpu.temperature_c

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu):
        return SimpleNamespace(gpu=50, memory=10)

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu):
        return SimpleNamespace(used=1024 * 2**20)

    def nvmlDeviceGetClockInfo(self, gpu: FakeGpu, kind: int) -> int:
        return 1400 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: FakeGpu) -> int:
        return gpu.throttle

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu):
        return [SimpleNamespace(pid=p, usedGpuMemory=512 * 2**20) for p in gpu.processes]


class FakeZeusNvidia:
    """Zeus 0.16's `NVIDIAGPUs` over a fake NVML module: like Zeus, one GPU object per NVML
    index it is given, in that order, whose `handle` is NVML's; each getter one NVML call on
    that handle, with NVML's errors turned into Zeus's (as `_handle_nvml_errors` does)."""

    def __init__(self, nvml, indices) -> None:
        self.nvml = nvml
        self.gpus = [SimpleNamespace(gpu_index=i, handle=nvml.nvmlDeviceGetHandleByIndex(i))
                     for i in indices]

    def _call(self, name, index, *args):
        try:
            return getattr(self.nvml, name)(self.gpus[index].handle, *args)
        except Exception as exc:
            raise ZeusGPUUnknownError(str(exc)) from exc

    def supports_get_total_energy_consumption(self, gpu_index: int) -> bool:
        return getattr(self.gpus[gpu_index].handle, "supports_counter", True)

    def get_total_energy_consumption(self, gpu_index: int) -> int:
        return self._call("nvmlDeviceGetTotalEnergyConsumption", gpu_index)

    def get_instant_power_usage(self, gpu_index: int) -> int:
        return self._call("nvmlDeviceGetPowerUsage", gpu_index)

    def get_gpu_temperature(self, gpu_index: int) -> int:
        return self._call("nvmlDeviceGetTemperature", gpu_index, 0)

    def get_name(self, gpu_index: int) -> str:
        return self._call("nvmlDeviceGetName", gpu_index)

    def get_power_management_limit(self, gpu_index: int) -> int:
        return self._call("nvmlDeviceGetPowerManagementLimit", gpu_index)


class ZeusOpener:
    """Stands for `telemetry.nvidia.open_zeus`: records the NVML indices Zeus is given."""

    def __init__(self, nvml) -> None:
        self.nvml = nvml
        self.asked: list[list[int]] = []

    def __call__(self, indices):
        self.asked.append(list(indices))
        return FakeZeusNvidia(self.nvml, self.asked[-1])


def nvidia_for(nvml, ids):
    """The job's GPUs as the meters see them: CUDA entries mapped, then opened through Zeus."""
    from llm_energy.telemetry.meters.gpu_ids import job_gpus
    from llm_energy.telemetry.nvidia import open_job

    return open_job(nvml, job_gpus(nvml, list(ids)), ZeusOpener(nvml))


def powercap_tree(root: Path, zones: dict[str, tuple[str, int, int]]) -> Path:
    """zones: dir name -> (name, energy_uj, max_energy_range_uj)."""
    for directory, (name, energy_uj, max_uj) in zones.items():
        d = root / directory
        d.mkdir(parents=True, exist_ok=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{energy_uj}\n")
        (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return root


def set_energy(root: Path, directory: str, energy_uj: int) -> None:
    (root / directory / "energy_uj").write_text(f"{energy_uj}\n")


class StepClock:
    """A clock that advances by `step` each call (or jumps when told)."""

    def __init__(self, start: float = 1000.0, step: float = 1.0) -> None:
        self.t = start
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t
