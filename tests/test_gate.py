"""The validity gate: windows long enough by construction (workload repetitions), cycles until
the J/token interval is tight, stationarity and contention flags, and the `estimate` meter
charging the cell's own process tree within its physical ceiling."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import small_study

from llm_energy.analysis.summary import summarise
from llm_energy.backends.base import (
    Backend,
    LoadInfo,
    RequestRecord,
    check_output_lengths,
    per_request,
)
from llm_energy.measure import gate, protocol
from llm_energy.measure.protocol import CellRunner
from llm_energy.study.config import ConfigError, validate_study
from llm_energy.study.matrix import expand
from llm_energy.telemetry.meters import EstimateMeter
from llm_energy.telemetry.meters.base import DOMAINS, Meter, WindowEnergy
from llm_energy.telemetry.meters.estimate import cpu_cores
from llm_energy.telemetry.meters.nvml import NvmlPowerMeter
from llm_energy.telemetry.proctree import ProcessTreeCpu
from llm_energy.telemetry.sampler import CpuProbe

NUM_PROMPTS, OUTPUT_TOKENS = 4, 3

BUSY_LOOP = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"
#: Spins until it has used `cpu_s` seconds of CPU, however loaded the machine is.
CPU_WORK = "import time\nwhile time.process_time() < {cpu_s}:\n    pass\n"


# ---------------------------------------------------------------- fakes


class FakeEngine(Backend):
    """Each repetition of the workload takes `request_s` of wall time; `calls` records the
    prompts per call and `tokens` counts every output token produced."""

    request_s = 0.0
    calls: list[int] = []
    tokens = 0

    def load(self):
        return LoadInfo(0.0, "cpu", "float32")

    def generate(self, prompts, output_tokens, exact=True):
        targets = per_request(output_tokens, len(prompts))
        FakeEngine.calls.append(len(prompts))
        start = time.perf_counter()
        if self.request_s:
            time.sleep(self.request_s * len(prompts) / NUM_PROMPTS)
        end = time.perf_counter()
        FakeEngine.tokens += sum(targets)
        records = [RequestRecord(i, len(p), n, start, start,
                                 [start + (end - start) / n * (k + 1) for k in range(n)])
                   for i, (p, n) in enumerate(zip(prompts, targets))]
        check_output_lengths(records, targets, exact, "fake")
        return records


class ScriptedMeter(Meter):
    """Window `cycle<k>` costs `j_per_token[k]` J per output token the engine produced in
    it; other windows (load) 1 J."""

    update_period_s = 0.0

    def __init__(self, j_per_token):
        super().__init__()
        self.j_per_token = list(j_per_token)

    @property
    def sources(self):
        return {"cpu": "rapl"}

    def begin_window(self, name):
        self._open[name] = (time.perf_counter(), FakeEngine.tokens)

    def end_window(self, name):
        t0, tokens0 = self._open.pop(name)
        energy = 1.0
        if name.startswith("cycle"):
            energy = self.j_per_token[int(name[5:])] * (FakeEngine.tokens - tokens0)
        return WindowEnergy(time.perf_counter() - t0, {**dict.fromkeys(DOMAINS), "cpu": energy},
                            {"cpu": "rapl"})


def cell(backend="transformers", settings=None, **measurement):
    study = small_study(
        backends={backend: settings or {}},
        workload={"num_prompts": NUM_PROMPTS, "input_tokens": 8, "output_tokens": OUTPUT_TOKENS},
        measurement={"idle_duration_s": 0, "warmup": {"min_runs": 0, "max_runs": 0},
                     **measurement})
    cells, _ = expand(validate_study(study))
    return json.loads(json.dumps({**cells[0].config, "cell_id": cells[0].cell_id}))


def run_cell(monkeypatch, config, meter, request_s=0.0):
    FakeEngine.request_s, FakeEngine.calls = request_s, []
    monkeypatch.setattr(protocol, "backend_class", lambda name, settings=None: FakeEngine)
    def prompts(self):  # as CellRunner._prompts: ids, and each request's output target
        self.output_targets = [OUTPUT_TOKENS] * NUM_PROMPTS
        return [[1] * 8] * NUM_PROMPTS

    monkeypatch.setattr(CellRunner, "_prompts", prompts)
    monkeypatch.setattr(CellRunner, "_architecture", lambda self: None)
    return CellRunner(config, "unused", log=lambda m: None, meter=meter).run()


def scripted_run(monkeypatch, j_per_token, **measurement):
    return run_cell(monkeypatch, cell(min_window_s=0, **measurement), ScriptedMeter(j_per_token))


# ---------------------------------------------------------------- the stopping rule

# Per-cycle J/token with a known spread, equal tokens per cycle (so J/token = Σ energy ÷ Σ
# tokens = their mean ≈ 1.0). The interval is Student t on the log scale (as the summary's):
# h = t(0.975, n−1) · s_log / √n, bounds value·e^∓h, relative half-width sinh(h). By hand,
# with ln 0.9 = −0.10536, ln 1.1 = 0.09531, ln 1.0 = 0:
#   n=2: s_log = 0.14190, h = 12.706·0.14190/√2 = 1.2749, sinh = 1.650
#   n=3: s_log = 0.10038, h =  4.303·0.10038/√3 = 0.24937, sinh = 0.2520
#   n=4: s_log = 0.08198, h =  3.182·0.08198/2  = 0.13042, sinh = 0.1308
#   n=5: s_log = 0.07100, h =  2.776·0.07100/√5 = 0.08815, sinh = 0.0883
#   n=6: s_log = 0.06351, h =  2.571·0.06351/√6 = 0.06667, sinh = 0.0667
SPREAD = [0.9, 1.1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
BY_HAND = {2: 1.650, 3: 0.2520, 4: 0.1308, 5: 0.0883, 6: 0.0667}


def test_interval_by_hand():
    for n, expected in BY_HAND.items():
        assert gate.j_per_token_ci_rel(SPREAD[:n], [1] * n) == pytest.approx(expected, rel=2e-3)


def test_stopping_rule_by_hand():
    def stops_at(target, cycles=2, max_cycles=8):
        done = []
        while gate.more_cycles_needed(done, [100] * len(done), cycles, max_cycles, target):
            done.append(100 * SPREAD[len(done)])
        return len(done)

    assert stops_at(0.10) == 5          # 0.1308 > 0.10 at n=4, 0.0883 <= 0.10 at n=5
    assert stops_at(0.07) == 6          # 0.0883 > 0.07, 0.0667 <= 0.07
    assert stops_at(0.30) == 3          # 0.2520
    assert stops_at(0.01, max_cycles=4) == 4   # never met: max_cycles
    assert stops_at(None) == 2          # no target: exactly `cycles`
    assert stops_at(0.10, cycles=6) == 6
    # A failed sensor (None) does not count towards the interval.
    assert gate.more_cycles_needed([1.0, None, 1.0], [1, 1, 1], 2, 8, 0.05) is False
    assert gate.more_cycles_needed([1.0, None], [1, 1], 2, 8, 0.05) is True


def test_the_gates_interval_is_the_summarys(seed=0):
    """The pure-Python interval of the measuring process equals the summary's vectorised one,
    for positive, mixed-sign and zero-crossing values and uneven token counts."""
    import random

    import numpy as np

    from llm_energy.analysis.statistics import ratio_of_sums
    from llm_energy.results.intervals import ratio_interval

    rng = random.Random(seed)
    for case in range(200):
        n = rng.randint(1, 6)
        nums = [rng.uniform(-0.5 if case % 3 == 0 else 0.1, 3.0) for _ in range(n)]
        dens = [rng.choice([1, 5, 50, 64]) for _ in range(n)]
        positive = case % 2 == 0
        value, low, high = ratio_interval(nums, dens, positive)
        stats = ratio_of_sums(np.zeros(n, dtype=int), pd.Series(nums), pd.Series(dens),
                              pd.Index(["c"]), positive)
        assert value == pytest.approx(stats["value"][0])
        if n < 2:
            assert low is None and np.isnan(stats["low"][0])
        else:
            assert (low, high) == pytest.approx((stats["low"][0], stats["high"][0]))


def test_cell_stops_at_the_cycle_count_computed_by_hand(monkeypatch):
    out = scripted_run(monkeypatch, SPREAD, cycles=2, max_cycles=8, target_ci_rel=0.10)
    jpt = [r["energy_per_output_token_j"] for r in out.runs]
    assert jpt == pytest.approx(SPREAD[:5])
    assert all(r["target_ci_rel"] == 0.10 for r in out.runs)
    summary = summarise(pd.DataFrame(out.runs), pd.DataFrame(out.requests)).iloc[0]
    assert summary["cycles"] == 5 and summary["gate_met"] is True
    assert summary["ci_rel_achieved"] == pytest.approx(BY_HAND[5], rel=2e-3)
    assert not any("validity gate not met" in w for w in summary["warnings"])


def test_cell_stops_at_max_cycles_when_the_target_cannot_be_met(monkeypatch):
    out = scripted_run(monkeypatch, SPREAD, cycles=2, max_cycles=4, target_ci_rel=0.01)
    assert len(out.runs) == 4
    summary = summarise(pd.DataFrame(out.runs), pd.DataFrame(out.requests)).iloc[0]
    assert summary["gate_met"] is False
    assert summary["ci_rel_achieved"] == pytest.approx(BY_HAND[4], rel=2e-3)
    assert any("validity gate not met: the 95% interval of J/token is +-13.1% after 4 "
               "cycle(s) (max_cycles 4), target +-1.0%" in w for w in summary["warnings"])


def test_max_cycles_below_cycles_is_refused():
    with pytest.raises(ConfigError, match=r"'measurement'.*max_cycles=2 is below cycles=3"):
        validate_study(small_study(measurement={"cycles": 3, "max_cycles": 2}))


# ---------------------------------------------------------------- windows by construction


def test_offline_cycle_repeats_the_workload_until_the_window_is_long_enough(monkeypatch):
    config = cell(cycles=2, min_window_s=0.3)
    out = run_cell(monkeypatch, config, EstimateMeter(10.0), request_s=0.04)
    for run in out.runs:
        # Repetitions of >= 0.04 s each until 0.3 s have passed: the last one started before
        # 0.3 s, and no more than ceil(0.3 / 0.04) = 8 were needed.
        last_start = max(q["arrival_s"] for q in out.requests if q["cycle"] == run["cycle"])
        assert last_start < 0.3 <= run["duration_s"] and 2 <= run["repetitions"] <= 8
        assert run["requests"] == NUM_PROMPTS * run["repetitions"]
        assert run["output_tokens"] == NUM_PROMPTS * OUTPUT_TOKENS * run["repetitions"]
        assert run["total_energy_j"] is not None and run["min_window_s"] == 0.3
    assert set(FakeEngine.calls) == {NUM_PROMPTS}   # offline: the workload as configured
    for cycle in (0, 1):
        ids = [r["request_id"] for r in out.requests if r["cycle"] == cycle]
        assert sorted(ids) == list(range(len(ids)))


def test_server_cycle_is_one_stream_of_repetitions(monkeypatch):
    config = cell("openai-server", {"base_url": "http://127.0.0.1:9/v1"}, cycles=3,
                  min_window_s=0.3)
    out = run_cell(monkeypatch, config, EstimateMeter(10.0), request_s=0.05)
    assert all(r["duration_s"] >= 0.3 for r in out.runs)
    # No warmup to plan from: cycle 0 starts with one repetition and tops up; later cycles
    # send R x num_prompts requests as one stream, R = ceil(0.3 x 1.25 / per-repetition s).
    reps = [r["repetitions"] for r in out.runs]
    assert FakeEngine.calls[0] == NUM_PROMPTS and all(c % NUM_PROMPTS == 0 for c in FakeEngine.calls)
    later = FakeEngine.calls[-2:]
    assert later == [NUM_PROMPTS * reps[1], NUM_PROMPTS * reps[2]]
    assert 2 <= reps[2] <= 8            # 0.375 s / 0.05 s = 7.5 -> 8 (less when sleeps overrun)


def test_min_window_defaults_to_the_sources_needs_and_is_never_below_its_resolution(
        monkeypatch, tmp_path):
    assert EstimateMeter(10.0).min_window_s == 1.0
    assert NvmlPowerMeter([], sample_period_s=1.0).min_window_s == 10.0
    runner = CellRunner(cell(min_window_s=0.05), "unused", meter=EstimateMeter(10.0))
    window, warnings = runner._min_window_s()
    assert window == pytest.approx(0.1)
    assert warnings == [("measurement.min_window_s=0.05 s is below 10 update periods of "
                         "estimate (0.1 s): 0.1 s used")]
    runner = CellRunner(cell(), "unused", meter=EstimateMeter(10.0))
    assert runner._min_window_s() == (1.0, [])


def test_an_idle_baseline_shorter_than_the_sources_window_is_flagged(tmp_path):
    class Idle:
        def synchronize(self):
            pass

    config = cell(idle_duration_s=0.2, idle_cache_ttl_s=0)
    warnings = []
    CellRunner(config, "unused", meter=EstimateMeter(10.0))._idle_power_w(Idle(), warnings)
    assert ("idle baseline measured over 0.2 s, shorter than the 1 s its energy source needs: "
            "idle power and net energy are coarse (raise idle_duration_s)") in warnings


# ---------------------------------------------------------------- stationarity


def test_non_stationary_cycles_are_flagged_with_the_numbers():
    warnings = gate.stationarity_warnings([17.5, 8.3, 1.75], [1.0, 1.01, 0.99], 0.10)
    assert len(warnings) == 1
    assert ("not stationary: time per workload repetition varies across cycles (17.5, 8.3, "
            "1.75 s; CV 86% > 10%)") in warnings[0]
    warnings = gate.stationarity_warnings([1.0, 1.02, 0.99], [2.0, 1.0, 1.5], 0.10)
    assert warnings and "energy per output token varies across cycles (2, 1, 1.5 J; CV 33%" \
        in warnings[0]
    assert gate.stationarity_warnings([1.0, 1.02, 0.99], [1.0, 1.01, None], 0.10) == []


# ---------------------------------------------------------------- process tree and contention


def _busy_child(seconds):
    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(s=seconds)])


def _busy_unrelated(seconds):
    """A busy loop that is not a descendant of this process (its parent shell exits)."""
    command = f"{sys.executable} -c '{BUSY_LOOP.format(s=seconds)}' >/dev/null 2>&1 & echo $!"
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _stop(pid):
    import psutil

    try:
        psutil.Process(pid).kill()
    except psutil.NoSuchProcess:
        pass


def test_estimate_charges_a_busy_child_but_not_an_unrelated_process():
    import resource

    from llm_energy.telemetry.meters.estimate import busy_core_seconds

    def reaped_children_s():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    meter = EstimateMeter(10.0)
    children0, own0 = reaped_children_s(), time.process_time()
    meter.begin_window("child")
    child = subprocess.Popen([sys.executable, "-c", CPU_WORK.format(cpu_s=0.5)])
    child.wait()            # reaped by this process: charged through its children's time
    window = meter.end_window("child")
    child_s, own_s = reaped_children_s() - children0, time.process_time() - own0
    # The child used >= 0.5 CPU-s: it is charged, with this process's own time (10 W/core).
    assert child_s >= 0.5
    assert window.energy_j["cpu"] == pytest.approx((child_s + own_s) * 10.0, abs=0.5)

    pid = _busy_unrelated(1.5)
    try:
        time.sleep(0.2)
        machine0 = busy_core_seconds()
        meter.begin_window("unrelated")
        time.sleep(1.0)
        window = meter.end_window("unrelated")
        machine = busy_core_seconds() - machine0
    finally:
        _stop(pid)
    assert machine >= 0.3                        # the unrelated loop did run ...
    assert window.energy_j["cpu"] < 0.1 * 10.0   # ... and is not charged to the cell


def test_tree_time_of_a_child_seen_running_is_not_counted_twice_when_it_is_reaped():
    import resource

    def reaped_children_s():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before, own_before = reaped_children_s(), time.process_time()
    tree = ProcessTreeCpu(scan_period_s=0.0)
    child = subprocess.Popen([sys.executable, "-c", CPU_WORK.format(cpu_s=0.4)])
    seen = 0.0
    while child.poll() is None:      # poll() reaps it at the end
        seen = tree.read_s()
        time.sleep(0.02)
    final = tree.read_s(rescan=True)
    own_s = time.process_time() - own_before
    child_s = reaped_children_s() - before
    assert child_s >= 0.4 and seen > 0.1      # the child was seen while it ran
    # The tree counts the child's CPU time as the kernel reports it once reaped, plus this
    # process's own (the scans), not that plus what it saw of the child before (10 ms ticks).
    assert final == pytest.approx(child_s + own_s, abs=0.05)


def test_contention_is_flagged_with_a_real_busy_process(tmp_path):
    runner = CellRunner(cell(), "unused", meter=EstimateMeter(10.0))
    runner._tree = ProcessTreeCpu()
    pid = _busy_unrelated(2.0)
    try:
        time.sleep(0.2)
        cpu0 = runner._cpu_snapshot()
        start = time.perf_counter()
        time.sleep(1.0)
        end = time.perf_counter()
        cpu1 = runner._cpu_snapshot()
    finally:
        _stop(pid)
    other = (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])
    window = WindowEnergy(end - start, {"cpu": 1.0, "gpu": None, "dram": None},
                          {"cpu": "estimate"})
    warnings, columns = runner._cycle_validity(3, start, end, window, [],
                                               [("cycle3", start, end)], None, other)
    assert columns["other_processes_cpu_s"] == other and other >= 0.3
    assert any(w.startswith(f"contention: other processes used {other:.2f} CPU-s in cycle 3")
               for w in warnings), warnings
    assert gate.contention_warning(0, 0.1, 1.0, 0.25) is None


def test_estimate_power_samples_stay_below_the_ceiling():
    """Edge samples a few ms apart used to divide a 10 ms tick by a few ms (71 W on a model
    whose ceiling is 2 cores x 10 W)."""
    children = [_busy_child(1.2) for _ in range(cpu_cores())]
    probe = CpuProbe(10.0)     # its tree is scanned at once: the children are in it
    try:
        powers = []
        end = time.perf_counter() + 0.8
        while time.perf_counter() < end:
            powers.append(probe.sample(time.perf_counter()).power_w)
            time.sleep(0.002)
    finally:
        for c in children:
            c.kill()
            c.wait()
    ceiling = cpu_cores() * 10.0
    assert len(powers) > 20 and max(powers) <= ceiling
    assert max(powers) > 0.05 * ceiling         # the children's load is seen
