"""Every energy source against fakes of its hardware interface: exact joules and flags, for
counters that advance, wrap, go backwards, stall or raise; GPU selection; detection order."""

import os
import re
from pathlib import Path

import pytest
from fake_hw import FakeGpu, FakeNvml, StepClock, ZeusOpener, nvidia_for, powercap_tree, set_energy

from llm_energy.telemetry.meters import CompositeMeter, detect
from llm_energy.telemetry.meters.base import Meter
from llm_energy.telemetry.meters.nvml import (
    GpuIdError,
    NvmlCounterMeter,
    NvmlPowerMeter,
    job_gpus,
    other_processes,
    visible_gpu_ids,
)
from llm_energy.telemetry.meters.rapl import RaplMeter, RaplUnavailable, discover
from llm_energy.telemetry.sampler import Sample

UUIDS = ["GPU-aaaa", "GPU-bbbb", "GPU-cccc"]
NO_RAPL = "/nonexistent-powercap"


def nvml_with(*energy_scripts, **kwargs):
    return FakeNvml([FakeGpu(UUIDS[i], list(script), **kwargs)
                     for i, script in enumerate(energy_scripts)])


def tied(meter):
    """The fake monotonic clock also drives the wall clock (no jump unless a test wants one)."""
    meter.wall_clock = lambda: meter.clock.t
    return meter


def counter_meter(nvml, ids=("0",), step=1.0, poll_interval_s=0.0):
    """The counter meter reading the fake GPUs through a fake of Zeus's GPU manager."""
    return tied(NvmlCounterMeter(nvidia_for(nvml, ids), clock=StepClock(step=step),
                                 poll_interval_s=poll_interval_s))


def window(meter, name="w", polls=0):
    meter.begin_window(name)
    for _ in range(polls):
        meter.poll()
    return meter.end_window(name)


# ---------------------------------------------------------------- nvml-counter


def test_nvml_counter_exact_joules_summed_over_the_jobs_gpus():
    nvml = nvml_with([1_000_000, 1_250_500], [7_000, 57_000], [0, 10**9])
    meter = counter_meter(nvml, ids=("0", "1"))
    w = window(meter)
    assert w.energy_j == {"gpu": pytest.approx(250.5 + 50.0), "cpu": None, "dram": None}
    assert w.source == {"gpu": "nvml-counter"} and w.warnings == []
    assert w.total_energy_j == pytest.approx(300.5)


def test_nvml_counter_going_backwards_is_flagged_never_negative_or_zero():
    meter = counter_meter(nvml_with([5_000_000, 1_000]))
    w = window(meter)
    assert w.energy_j["gpu"] is None and w.total_energy_j is None
    assert any("went backwards" in m and "not reported" in m for m in w.warnings)


def test_nvml_reset_caught_by_a_poll_inside_the_window_invalidates_only_that_window():
    # begin 1000 J, poll sees 0.5 J (driver reload), end 0.7 J: the end is above the poll,
    # so only the fault log can tell this window is wrong.
    meter = counter_meter(nvml_with([1_000_000, 500, 700, 900, 10_900]))
    w = window(meter, polls=1)
    assert w.energy_j["gpu"] is None
    assert any("backwards" in m for m in w.warnings)
    after = window(meter, "next")
    assert after.energy_j["gpu"] == pytest.approx(10.0) and after.warnings == []


def test_counter_polls_are_rate_limited():
    # An NVML energy read costs ~5 ms of CPU on an H100: the 10 Hz sampler must not make one
    # per tick. The fake clock advances 1 s per call (a poll's check, and a read): the
    # first poll reads, then one per 10 s, i.e. at t = 1001, 1012, 1023, 1034 of 30 polls.
    nvml = nvml_with(list(range(0, 10**6, 1000)))
    meter = counter_meter(nvml, poll_interval_s=10.0)
    for _ in range(30):
        meter.poll()
    assert nvml.gpus[0].reads == 4


def test_stalled_nvml_counter_is_flagged_not_zero():
    meter = counter_meter(nvml_with([42_000, 42_000]), step=1.0)
    w = window(meter)
    assert w.energy_j["gpu"] is None
    assert any("did not advance" in m for m in w.warnings)


def test_nvml_error_mid_run_is_flagged_and_the_next_window_recovers():
    nvml = nvml_with([1_000_000, 2_000_000, 3_000_000, 4_500_000], fail_energy_at={1})
    meter = counter_meter(nvml)
    w = window(meter)
    assert w.energy_j["gpu"] is None and w.total_energy_j is None
    assert any("read failed at the end" in m and "GPU is lost" in m for m in w.warnings)
    w2 = window(meter, "again")
    assert w2.energy_j["gpu"] == pytest.approx(1500.0) and w2.warnings == []


def test_short_window_is_flagged_but_still_measured():
    meter = counter_meter(nvml_with([0, 5_000]), step=0.01)
    w = window(meter)
    assert w.energy_j["gpu"] == pytest.approx(5.0)
    assert any("shorter than 10x" in m for m in w.warnings)


# ---------------------------------------------------------------- GPU selection


@pytest.mark.parametrize("env, ids, warned", [
    ({"CUDA_VISIBLE_DEVICES": "2,0"}, ["2", "0"], None),
    ({"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}, ["GPU-bbbb"], None),
    ({"CUDA_VISIBLE_DEVICES": " 1, 0"}, ["1", "0"], None),
    # CUDA stops at the first invalid entry: what follows is ignored, and we say so.
    ({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, ["1"], "entry '-1'.*ignores '-1,2'"),
    ({"CUDA_VISIBLE_DEVICES": "0,gpu1,2"}, ["0"], "entry 'gpu1'.*ignores 'gpu1,2'"),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, [], None),        # the usual way to hide every GPU
    ({"CUDA_VISIBLE_DEVICES": ""}, [], None),
    ({"CUDA_VISIBLE_DEVICES": "MIG-GPU-aa/1/0,MIG-1b2c"}, ["MIG-GPU-aa/1/0", "MIG-1b2c"], None),
    ({"SLURM_STEP_GPUS": "2"}, ["2"], None),
    ({}, ["0", "1"], "not set"),
])
def test_visible_gpu_ids(env, ids, warned):
    got, warning = visible_gpu_ids(env, default_count=2)
    assert got == ids
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and re.search(warned, warning), warning


# A node as NVML lists it: two UUIDs share the prefix GPU-8932 (as in real fleets); GPU 3 is
# split into two MIG instances.
NODE_UUIDS = ["GPU-8932f937-0d2a-4b6c-9d61-3f0a1c2b4e51", "GPU-8932a1c0-77e3-41aa-8f0e-9b1d2c3e4f50",
              "GPU-5e1c2b3a-1111-2222-3333-444455556666", "GPU-77aa0b1c-9999-8888-7777-666655554444"]
MIG_UUIDS = ["MIG-1b2c3d4e-aaaa-5bbb-8ccc-dddddddddddd", "MIG-1b9f0e1d-eeee-5fff-8000-111111111111"]


def node():
    gpus = [FakeGpu(u, [1000 * (i + 1), 1000 * (i + 1) + 7000 * (i + 1)]) for i, u in enumerate(NODE_UUIDS)]
    gpus[3].migs = [FakeGpu(MIG_UUIDS[0], [0], instance_ids=(1, 0), supports_counter=False),
                    FakeGpu(MIG_UUIDS[1], [0], instance_ids=(2, 0), supports_counter=False)]
    return FakeNvml(gpus)


@pytest.mark.parametrize("visible, idents, nvml_indices", [
    ("2", [NODE_UUIDS[2]], [2]),
    ("GPU-8932f937", [NODE_UUIDS[0]], [0]),                 # the unique prefix of GPU 0
    (NODE_UUIDS[1], [NODE_UUIDS[1]], [1]),                  # a full UUID
    ("GPU-5e1c", [NODE_UUIDS[2]], [2]),
    ("3,GPU-8932a,GPU-5e", [NODE_UUIDS[3], NODE_UUIDS[1], NODE_UUIDS[2]], [3, 1, 2]),
    ("MIG-1b9f", [MIG_UUIDS[1]], [3]),                      # a MIG UUID prefix
    (MIG_UUIDS[0], [MIG_UUIDS[0]], [3]),                    # a whole MIG UUID
    ("MIG-GPU-77aa0b1c/1/0", [MIG_UUIDS[0]], [3]),          # the older MIG form
    ("MIG-GPU-77aa0b1c-9999-8888-7777-666655554444/2/0", [MIG_UUIDS[1]], [3]),
    ("1,-1,0", [NODE_UUIDS[1]], [1]),                       # CUDA stops at -1
])
def test_each_cuda_id_form_maps_to_the_right_nvml_device(visible, idents, nvml_indices):
    nvml = node()
    ids, _ = visible_gpu_ids({"CUDA_VISIBLE_DEVICES": visible})
    gpus = job_gpus(nvml, ids)
    assert [g.ident for g in gpus] == idents
    assert [g.nvml_index for g in gpus] == nvml_indices
    assert [g.label for g in gpus] == [f"gpu{i}" for i in range(len(idents))]
    assert all(g.handle is nvml.by_uuid[u] for g, u in zip(gpus, idents))


@pytest.mark.parametrize("visible, message", [
    ("GPU-8932", r"entry 'GPU-8932' \(position 0\).*ambiguous.*prefix of 2 devices.*"
                 + NODE_UUIDS[0] + ".*" + NODE_UUIDS[1]),
    ("0,GPU-dead", (r"entry 'GPU-dead' \(position 1\).*no device matches 'GPU-dead'.*"
                    r"this node has 4 GPU\(s\)")),
    ("7", r"entry '7' \(position 0\).*no GPU with index 7"),
    ("MIG-ffff", r"entry 'MIG-ffff'.*no device matches.*MIG instances"),
    ("MIG-GPU-77aa0b1c/5/0", r"entry 'MIG-GPU-77aa0b1c/5/0'.*no device matches"),
    ("0,GPU-8932f937", r"entries '0' and 'GPU-8932f937' name the same device"),
])
def test_unmappable_or_ambiguous_ids_fail_with_the_entry_named(visible, message):
    ids, _ = visible_gpu_ids({"CUDA_VISIBLE_DEVICES": visible})
    with pytest.raises(GpuIdError, match=message):
        job_gpus(node(), ids)
    # ... and a cuda cell fails with it, whatever the energy source: the backend would run
    # on other GPUs than the ones metered.
    for source in ("auto", "estimate"):
        with pytest.raises(GpuIdError, match=message):
            detect("cuda", source, 10.0, nvml=node(), powercap_root=NO_RAPL,
                   environ={"CUDA_VISIBLE_DEVICES": visible})


@pytest.mark.parametrize("visible, for_zeus", [
    ("GPU-8932a,GPU-5e", "1,2"),      # Zeus int()s every entry: it gets the NVML indices
    ("1,-1,0", "1"),                  # what CUDA uses, not what the variable says
    ("2,0", "2,0"),                   # plain indices: unchanged
    ("MIG-1b9f", "3"),                # a MIG slice: its whole GPU (Zeus refuses MIG ids)
    ("MIG-1b9f,MIG-GPU-77aa0b1c/1/0,0", "3,0"),   # two slices of GPU 3: it is opened once
    (None, None),
])
def test_zeus_is_given_the_nvml_indices_cuda_uses(visible, for_zeus):
    from llm_energy.telemetry import gpu_control

    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert gpu_control.zeus_visible_devices(env, nvml=node()) == for_zeus


def test_detect_meters_the_gpu_a_uuid_prefix_names():
    # Before: NVML answered "Not Found" to the prefix, the error was swallowed and the cuda
    # cell was metered by the CPU estimate. Now GPU 1's counter: 14 J between two reads.
    nvml = node()
    zeus = ZeusOpener(nvml)
    d = detect("cuda", "auto", 10.0, nvml=nvml, zeus=zeus, powercap_root=NO_RAPL,
               environ={"CUDA_VISIBLE_DEVICES": "GPU-8932a1"})
    assert isinstance(d.meter, NvmlCounterMeter) and [g.ident for g in d.gpus] == [NODE_UUIDS[1]]
    assert zeus.asked == [[1]]          # Zeus was given the NVML index, not the prefix
    d.meter.gpus[0].handle.reads = 0
    assert window(d.meter).energy_j["gpu"] == pytest.approx(14.0)


@pytest.mark.parametrize("energy_source", ["auto", "rapl"])
@pytest.mark.parametrize("why, nvml, visible", [
    ("NVML unavailable", None, "0"),
    ("names none", "node", ""),
    ("names none", "node", "-1"),
])
def test_cuda_without_a_gpu_meter_fails_unless_estimate_was_asked_for(
        tmp_path, monkeypatch, energy_source, why, nvml, visible):
    from llm_energy.telemetry import meters
    from llm_energy.telemetry.meters.nvml import NoGpus

    def no_nvml():
        raise NoGpus("NVML unavailable: NVML Shared Library Not Found")

    monkeypatch.setattr(meters, "load_nvml", no_nvml)
    # RAPL is readable, so the CPU part could be measured: still not a cuda cell's energy.
    root = powercap_tree(tmp_path, {"intel-rapl:0": ("package-0", 1_000_000, 10**12)})
    fake = node()
    kwargs = {"nvml": fake if nvml else None, "zeus": ZeusOpener(fake), "powercap_root": root,
              "environ": {"CUDA_VISIBLE_DEVICES": visible}}
    with pytest.raises(RuntimeError, match=f"device is 'cuda' but no GPU energy meter.*{why}"
                                           ".*energy_source: estimate"):
        detect("cuda", energy_source, 10.0, **kwargs)
    d = detect("cuda", "estimate", 10.0, **kwargs)
    assert d.meter.sources == {"cpu": "estimate"}


def test_only_the_jobs_gpus_get_handles_by_index_or_uuid():
    nvml = nvml_with([0, 1], [0, 1], [0, 1])
    gpus = job_gpus(nvml, ["GPU-cccc", "1"])
    assert [g.label for g in gpus] == ["gpu0", "gpu1"]
    assert [g.ident for g in gpus] == ["GPU-cccc", "GPU-bbbb"]
    assert nvml.handles_asked == ["GPU-cccc", 1]


def test_detect_meters_visible_gpu_only_and_says_cpu_is_not_measured():
    # The first reading of each GPU goes to the detection's support probe.
    nvml = nvml_with([0, 0, 1000], [0, 0, 99_000])
    d = detect("cuda", "auto", 10.0, nvml=nvml, zeus=ZeusOpener(nvml), powercap_root=NO_RAPL,
               environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert isinstance(d.meter, NvmlCounterMeter) and [g.ident for g in d.gpus] == ["GPU-bbbb"]
    assert d.meter.sources == {"gpu": "nvml-counter"}
    assert any("CPU and DRAM energy not measured" in w for w in d.warnings)
    assert window(d.meter).energy_j["gpu"] == pytest.approx(99.0)


def test_detect_falls_back_to_nvml_power_without_a_counter():
    nvml = nvml_with([0], supports_counter=False)
    d = detect("cuda", "auto", 10.0, nvml=nvml, zeus=ZeusOpener(nvml), powercap_root=NO_RAPL,
               environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert isinstance(d.meter, NvmlPowerMeter)
    assert any("no total-energy counter" in n for n in d.notes)
    with pytest.raises(RuntimeError, match="nvml-counter.*not available"):
        detect("cuda", "nvml-counter", 10.0, nvml=nvml, zeus=ZeusOpener(nvml),
               powercap_root=NO_RAPL,
               environ={"CUDA_VISIBLE_DEVICES": "0"})


def test_detect_combines_gpu_counter_and_rapl(tmp_path):
    root = powercap_tree(tmp_path, {"intel-rapl:0": ("package-0", 1_000_000, 10**12)})
    nvml = nvml_with([0, 0, 50_000])
    d = detect("cuda", "auto", 10.0, nvml=nvml, zeus=ZeusOpener(nvml), powercap_root=root,
               environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert isinstance(d.meter, CompositeMeter)
    assert d.meter.sources == {"gpu": "nvml-counter", "cpu": "rapl"}
    d.meter.begin_window("w")
    set_energy(root, "intel-rapl:0", 4_000_000)
    w = d.meter.end_window("w")
    assert w.energy_j == {"gpu": pytest.approx(50.0), "cpu": pytest.approx(3.0), "dram": None}
    assert w.energy_source == "nvml-counter+rapl" and w.total_energy_j == pytest.approx(53.0)


def test_other_processes_excludes_our_own():
    nvml = FakeNvml([FakeGpu(UUIDS[0], [0], processes=[os.getpid(), 4242])])
    found = other_processes(nvidia_for(nvml, ["0"]), {os.getpid()})
    assert found == ["gpu0: pid 4242 (512 MiB)"]


# ---------------------------------------------------------------- rapl (powercap)


def rapl_tree(tmp_path, package_uj=1_000_000, dram_uj=100, max_uj=262_143_328_850):
    return powercap_tree(tmp_path, {
        "intel-rapl:0": ("package-0", package_uj, max_uj),
        "intel-rapl:0:0": ("core", 5, max_uj),          # inside the package: not added
        "intel-rapl:0:1": ("dram", dram_uj, max_uj),
        "intel-rapl:1": ("psys", 7, max_uj),            # whole platform: not added
    })


def test_rapl_package_and_dram_exact_joules(tmp_path):
    root = rapl_tree(tmp_path)
    meter = tied(RaplMeter(discover(root), clock=StepClock()))
    assert meter.sources == {"cpu": "rapl", "dram": "rapl"}
    meter.begin_window("w")
    set_energy(root, "intel-rapl:0", 3_500_000)
    set_energy(root, "intel-rapl:0:1", 600_100)
    set_energy(root, "intel-rapl:0:0", 9_999_999)
    w = meter.end_window("w")
    assert w.energy_j == {"gpu": None, "cpu": pytest.approx(2.5), "dram": pytest.approx(0.6)}
    assert w.warnings == []


def test_rapl_wraparound_at_max_energy_range(tmp_path):
    root = rapl_tree(tmp_path, package_uj=9_000_000, max_uj=10_000_000)
    meter = tied(RaplMeter(discover(root), clock=StepClock()))
    meter.begin_window("w")
    set_energy(root, "intel-rapl:0", 1_000_000)
    set_energy(root, "intel-rapl:0:1", 300)
    w = meter.end_window("w")
    assert w.energy_j["cpu"] == pytest.approx(2.0)   # (10 - 9) + 1
    assert w.warnings == []


def test_rapl_two_wraps_in_one_window_are_counted_through_polling(tmp_path):
    root = rapl_tree(tmp_path, package_uj=9_000_000, max_uj=10_000_000)
    meter = tied(RaplMeter(discover(root), clock=StepClock()))
    meter.begin_window("w")
    for reading in (5_000_000, 2_000_000):            # each lower than the last: a wrap
        set_energy(root, "intel-rapl:0", reading)
        meter.poll()
    set_energy(root, "intel-rapl:0", 4_000_000)
    w = meter.end_window("w")
    assert w.energy_j["cpu"] == pytest.approx(6.0 + 7.0 + 2.0)


def test_rapl_implausible_backwards_step_is_a_fault_not_a_wrap(tmp_path):
    # 1 J lower after 1 ms: a wrap would mean 262 kJ in 1 ms.
    root = rapl_tree(tmp_path, package_uj=50_000_000)
    meter = tied(RaplMeter(discover(root), clock=StepClock(step=0.001)))
    meter.begin_window("w")
    set_energy(root, "intel-rapl:0", 49_000_000)
    set_energy(root, "intel-rapl:0:1", 1_100)  # DRAM advances normally: 1 mJ
    w = meter.end_window("w")
    assert w.energy_j["cpu"] is None and w.energy_j["dram"] == pytest.approx(0.001)
    assert w.total_energy_j is None
    assert any("went backwards" in m for m in w.warnings)


def test_rapl_sums_sockets(tmp_path):
    root = powercap_tree(tmp_path, {"intel-rapl:0": ("package-0", 0, 10**9),
                                    "intel-rapl:1": ("package-1", 0, 10**9)})
    meter = tied(RaplMeter(discover(root), clock=StepClock()))
    meter.begin_window("w")
    set_energy(root, "intel-rapl:0", 1_000_000)
    set_energy(root, "intel-rapl:1", 2_500_000)
    assert meter.end_window("w").energy_j["cpu"] == pytest.approx(3.5)


def test_rapl_absent_or_unreadable_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    with pytest.raises(RaplUnavailable, match="no RAPL zones under"):
        discover(tmp_path)
    root = rapl_tree(tmp_path / "locked")
    # Kernels since 2020 make energy_uj root-only (and this test may run as root, where
    # chmod does not bite): fail the reads the way a non-root user sees them.
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    locked = re.escape(str(root / "intel-rapl:0" / "energy_uj"))
    with pytest.raises(RaplUnavailable, match=f"{locked} is not readable.*chmod o\\+r {locked}"):
        discover(root)


@pytest.mark.parametrize("missing", ["max_energy_range_uj", "energy_uj"])
def test_rapl_message_names_the_missing_file(tmp_path, missing):
    # Before: a missing max_energy_range_uj read "no RAPL package/dram zones".
    root = rapl_tree(tmp_path)
    (root / "intel-rapl:0" / missing).unlink()
    with pytest.raises(RaplUnavailable, match=re.escape(f"{root / 'intel-rapl:0' / missing} is missing")):
        discover(root)


def test_rapl_unreadable_range_file_is_named_not_energy_uj(tmp_path, monkeypatch):
    root = rapl_tree(tmp_path)
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "max_energy_range_uj" and self.parent.name == "intel-rapl:0":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(RaplUnavailable) as raised:
        discover(root)
    message = str(raised.value)
    assert f"{root / 'intel-rapl:0' / 'max_energy_range_uj'} is not readable" in message
    assert "energy_uj is" not in message.replace("max_energy_range_uj", "")


def test_rapl_zone_left_out_is_a_warning_naming_its_file(tmp_path):
    # The package is fine, the DRAM zone's counter is gone: cpu is measured, dram is not,
    # and every row says which file is missing.
    root = rapl_tree(tmp_path)
    (root / "intel-rapl:0:1" / "energy_uj").unlink()
    meter = RaplMeter.probe(root)
    assert meter.sources == {"cpu": "rapl"}
    assert any(f"{root / 'intel-rapl:0:1' / 'energy_uj'} is missing" in w
               for w in meter.static_warnings), meter.static_warnings


def test_rapl_without_a_package_zone_lists_the_zones_found(tmp_path):
    root = powercap_tree(tmp_path, {"intel-rapl:1": ("psys", 7, 10**9)})
    with pytest.raises(RaplUnavailable, match=r"no RAPL package zone.*zones found: psys"):
        discover(root)


def test_rapl_requested_explicitly_on_a_machine_without_it_fails_clearly():
    with pytest.raises(RuntimeError, match="'rapl' was requested.*rapl: no RAPL"):
        detect("cpu", "rapl", 10.0, powercap_root=NO_RAPL)


def test_this_machine_has_no_rapl_so_auto_is_the_labelled_estimate():
    # The real path on this machine: the real powercap root and no NVML.
    d = detect("cpu", "auto", 10.0)
    assert d.meter.sources == {"cpu": "estimate"}
    assert any("estimated" in w for w in d.meter.static_warnings)


# ---------------------------------------------------------------- nvml-power


class FakeSampler:
    def __init__(self, points, device="gpu0"):
        self.samples = [Sample(t, device, p, "nvml-power", None, None, None, None)
                        for t, p in points]


def power_meter(points, t0, t1, period=0.1):
    nvml = nvml_with([0])
    times, walls = iter([t0, t1]), iter([t0, t1])
    meter = NvmlPowerMeter(job_gpus(nvml, ["0"]), period, clock=lambda: next(times))
    meter.wall_clock = lambda: next(walls)
    meter.attach_sampler(FakeSampler(points))
    return meter


def test_nvml_power_trapezoid_with_interpolation_at_the_edges():
    points = [(9.9, 100.0), *[(10.0 + 0.1 * k, 200.0) for k in range(1, 20)], (12.1, 100.0)]
    meter = power_meter(points, 10.0, 12.0)
    w = window(meter)
    # 10.0: interpolated 150 W -> 200 W at 10.1; 200 W to 11.9; 11.9 -> 12.0: 200 -> 150 W.
    expected = 0.1 * (150 + 200) / 2 + 1.8 * 200 + 0.1 * (200 + 150) / 2
    assert w.energy_j["gpu"] == pytest.approx(expected)
    assert w.source == {"gpu": "nvml-power"}
    assert w.warnings == []


def test_nvml_power_gap_is_flagged_and_too_few_samples_not_reported():
    gap = [(10.0, 100.0), (10.1, 100.0), (12.0, 100.0)]
    w = window(power_meter(gap, 10.0, 12.0))
    assert w.energy_j["gpu"] == pytest.approx(200.0)
    assert any("cover 10% of the window (< 95%)" in m for m in w.warnings)
    w = window(power_meter([(9.0, 100.0), (10.5, 100.0)], 10.0, 12.0))
    assert w.energy_j["gpu"] is None
    assert any("1 NVML power sample(s)" in m for m in w.warnings)


# ---------------------------------------------------------------- clocks


class ConstantMeter(Meter):
    detects_stall = False

    def __init__(self, clock, wall_clock):
        super().__init__(clock, wall_clock)
        self.j = 0.0

    @property
    def sources(self):
        return {"cpu": "rapl"}

    def read_j(self):
        self.j += 10.0
        return {"cpu": self.j}


def test_wall_clock_jump_is_flagged_energy_kept():
    walls = iter([1_000.0, 4_600.0])          # +1 h on the wall clock, 1 s monotonic
    meter = ConstantMeter(StepClock(step=1.0), lambda: next(walls))
    w = window(meter)
    assert w.energy_j["cpu"] == pytest.approx(10.0) and w.duration_s == pytest.approx(1.0)
    assert any("wall clock jumped +3599" in m for m in w.warnings)


def test_monotonic_clock_going_backwards_reports_no_energy():
    times = iter([100.0, 99.0])
    meter = ConstantMeter(lambda: next(times), lambda: 0.0)
    w = window(meter)
    assert w.energy_j["cpu"] is None and w.duration_s == 0.0
    assert any("monotonic clock went backwards" in m for m in w.warnings)
