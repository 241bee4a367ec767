"""One hardware layer for NVIDIA GPUs: the meters, the sampler and provenance read through the
same Zeus GPU objects that set power limits and clocks. `CUDA_VISIBLE_DEVICES` entries that
Zeus cannot parse (UUIDs, UUID prefixes, MIG ids) reach it as NVML indices; a MIG slice is
metered as its whole GPU and flagged. Zeus's real `NVIDIAGPUs` runs here over a patched
pynvml (this machine has no GPU); the mapping uses the fake NVML node of test_meters_sources."""

from types import SimpleNamespace

import pynvml
import pytest
from fake_hw import ZeusOpener
from test_meters_sources import MIG_UUIDS, NO_RAPL, NODE_UUIDS, node, window

from llm_energy.telemetry import nvidia
from llm_energy.telemetry.meters import NvmlCounterMeter, detect


def _fresh_reads(d):
    for gpu in d.gpus:
        gpu.handle.reads = 0


def test_a_mig_slice_is_metered_as_its_whole_gpu_and_flagged():
    nvml = node()
    zeus = ZeusOpener(nvml)
    d = detect("cuda", "auto", 10.0, nvml=nvml, zeus=zeus, powercap_root=NO_RAPL,
               environ={"CUDA_VISIBLE_DEVICES": "MIG-1b9f"})
    assert zeus.asked == [[3]]            # the parent GPU's NVML index, not the MIG id
    assert isinstance(d.meter, NvmlCounterMeter) and d.nvidia.mig
    (gpu,) = d.gpus
    assert (gpu.label, gpu.ident, gpu.mig, gpu.zeus_index) == ("gpu0", NODE_UUIDS[3], True, 0)
    assert any(w.startswith(f"MIG: {MIG_UUIDS[1]} metered as the whole GPU") for w in d.warnings)
    _fresh_reads(d)
    # GPU 3's counter: 4 J, then 4 + 28 J (node(): GPU i advances 7 * (i + 1) J).
    assert window(d.meter).energy_j["gpu"] == pytest.approx(28.0)


def test_two_slices_of_one_gpu_are_one_metered_gpu():
    nvml = node()
    zeus = ZeusOpener(nvml)
    d = detect("cuda", "auto", 10.0, nvml=nvml, zeus=zeus, powercap_root=NO_RAPL,
               environ={"CUDA_VISIBLE_DEVICES": f"{MIG_UUIDS[0]},MIG-GPU-77aa0b1c/2/0,0"})
    assert zeus.asked == [[3, 0]]
    assert [(g.label, g.nvml_index, g.mig) for g in d.gpus] == [("gpu0", 3, True),
                                                                 ("gpu2", 0, False)]
    _fresh_reads(d)
    assert window(d.meter).energy_j["gpu"] == pytest.approx(28.0 + 7.0)   # not 28 twice


def test_whole_gpus_are_not_flagged():
    nvml = node()
    d = detect("cuda", "auto", 10.0, nvml=nvml, zeus=ZeusOpener(nvml), powercap_root=NO_RAPL,
               environ={"CUDA_VISIBLE_DEVICES": "GPU-5e1c"})
    assert not d.nvidia.mig and not any(w.startswith("MIG") for w in d.warnings)


@pytest.fixture
def real_zeus(monkeypatch):
    """Zeus's own NVIDIAGPUs, over pynvml calls answered by the fake node."""
    fake = node()
    monkeypatch.delenv("ZEUSD_SOCK_PATH", raising=False)
    monkeypatch.delenv("ZEUSD_HOST_PORT", raising=False)
    monkeypatch.setattr(nvidia, "_MANAGERS", {})

    def not_grace_hopper(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    for name, fn in {"nvmlInit": lambda: None, "nvmlShutdown": lambda: None,
                     "nvmlDeviceGetHandleByIndex": fake.nvmlDeviceGetHandleByIndex,
                     "nvmlDeviceGetC2cModeInfoV": not_grace_hopper,
                     "nvmlDeviceGetTotalEnergyConsumption": fake.nvmlDeviceGetTotalEnergyConsumption,
                     "nvmlDeviceGetArchitecture": lambda h: pynvml.NVML_DEVICE_ARCH_HOPPER,
                     }.items():
        monkeypatch.setattr(pynvml, name, fn)
    return fake


def test_zeus_gets_the_indices_and_the_variable_is_restored(real_zeus, monkeypatch):
    # What the job has: a MIG id and a UUID prefix, which Zeus's int() parsing refuses.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1b9f,GPU-8932a")
    manager = nvidia.open_zeus([3, 1])
    assert [g.gpu_index for g in manager.gpus] == [3, 1]
    assert [g.handle.uuid for g in manager.gpus] == [NODE_UUIDS[3], NODE_UUIDS[1]]
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "MIG-1b9f,GPU-8932a"
    assert nvidia.open_zeus([3, 1]) is manager      # one manager per process and indices


def test_detect_reads_the_counter_through_zeus_for_a_uuid_prefix(real_zeus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8932a1")
    d = detect("cuda", "auto", 10.0, nvml=real_zeus, powercap_root=NO_RAPL)
    assert type(d.nvidia.zeus).__name__ == "NVIDIAGPUs"      # Zeus's own manager
    assert [g.gpu_index for g in d.nvidia.zeus.gpus] == [1]
    _fresh_reads(d)
    assert window(d.meter).energy_j["gpu"] == pytest.approx(14.0)   # GPU 1: 2 J -> 16 J


def test_gpu_axes_on_a_mig_slice_fail_before_anything_is_set(tmp_path):
    from llm_energy.measure.gpu_settings import GpuSettingsPhase
    from llm_energy.telemetry.gpu_state import GpuControlError

    phase = GpuSettingsPhase()
    phase.device = "cuda"
    phase.measurement = {"device": "cuda", "gpu_power_limit_w": 300.0,
                         "gpu_state_dir": str(tmp_path)}
    phase.detection = SimpleNamespace(gpus=[], nvidia=SimpleNamespace(mig=True))
    with pytest.raises(GpuControlError, match="MIG slice: power limits and clocks are device-wide"):
        phase._apply_gpu_settings([])


@pytest.mark.parametrize("zeusd_ids, job_gpus, refused", [
    ([0, 1, 2, 3], 4, False),   # the job sees the whole node: its indices are zeusd's
    ([0, 1, 2, 3], 1, True),    # a Slurm job confined to 1 GPU sees it as index 0
    ([0], 1, False),
])
def test_zeusd_indices_must_be_the_jobs_before_anything_is_set(zeusd_ids, job_gpus, refused):
    from fake_hw import FakeGpu, FakeNvml

    client = SimpleNamespace(gpu_ids=zeusd_ids, endpoint="/run/zeusd/zeusd.sock")
    nvml = FakeNvml([FakeGpu(f"GPU-{i}", [0]) for i in range(job_gpus)])
    problem = nvidia.zeusd_index_mismatch(nvml, client)
    assert (problem is not None) == refused
    if refused:
        assert "manages GPU indices [0, 1, 2, 3] but this job's NVML sees 1 GPU(s)" in problem


def test_without_zeusd_there_is_nothing_to_compare(monkeypatch):
    monkeypatch.delenv("ZEUSD_SOCK_PATH", raising=False)
    monkeypatch.delenv("ZEUSD_HOST_PORT", raising=False)
    assert nvidia.zeusd_index_mismatch() is None


def test_the_fake_manager_has_the_signatures_of_zeus_gpus():
    """Every getter the meters call on the fake exists on Zeus 0.16's GPUs with the same
    parameters, and `NvidiaGpus` calls nothing else on Zeus."""
    import inspect
    import re
    from pathlib import Path

    from fake_hw import FakeZeusNvidia
    from zeus.device.gpu.common import GPUs

    getters = [n for n in vars(FakeZeusNvidia) if not n.startswith("_")]
    for name in getters:
        ours = list(inspect.signature(getattr(FakeZeusNvidia, name)).parameters)
        theirs = list(inspect.signature(getattr(GPUs, name)).parameters)
        assert ours == theirs, name
    called = set(re.findall(r"self\.zeus\.(\w+)\(", Path(nvidia.__file__).read_text()))
    assert called and called <= set(getters), called - set(getters)
