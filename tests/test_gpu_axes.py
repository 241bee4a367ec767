"""GPU power limit and clock axes end to end without a GPU: config keys, matrix crossing and
pruning, unchanged cell ids when unset, the gpu_control resource, the protocol phase (apply,
per-cycle read-back, restore when the backend fails), the runner resetting what a timed-out
child left, and the example study. Zeus is replaced by tests/fake_zeus.py."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, small_study
from fake_zeus import DEFAULT_MW, FakeZeusGPUs

from llm_energy.execution import runner
from llm_energy.measure.gpu_settings import GpuSettingsPhase
from llm_energy.study.config import ConfigError, validate_study
from llm_energy.study.matrix import expand
from llm_energy.study.plan import plan_from_config
from llm_energy.telemetry import gpu_control as gc
from llm_energy.telemetry import gpu_readback

TESTS = Path(__file__).parent


def gpu_study(device="cuda", **measurement):
    study = small_study(backends={"transformers": {"batch_size": [2, 4], "dtype": ["float32"]}})
    study["measurement"] = {**study["measurement"], "device": device, **measurement}
    return study


# ---------------------------------------------------------------- config and matrix


def test_axes_accept_a_scalar_a_list_and_ranges():
    m = validate_study(gpu_study(gpu_power_limit_w=300, gpu_sm_clock_mhz=[1410, [990, 1980]],
                                 gpu_memory_clock_mhz=2619)).measurement
    assert m.gpu_axes() == {"gpu_power_limit_w": [300.0], "gpu_sm_clock_mhz": [1410, [990, 1980]],
                            "gpu_memory_clock_mhz": [2619]}
    assert validate_study(gpu_study()).measurement.gpu_axes() == {}


@pytest.mark.parametrize(("key", "value", "words"), [
    ("gpu_power_limit_w", -5, "gpu_power_limit_w"),
    ("gpu_sm_clock_mhz", [[1980, 990]], "min must not exceed max"),
    ("gpu_sm_clock_mhz", [[1, 2, 3]], "gpu_sm_clock_mhz"),
    ("gpu_memory_clock_mhz", "fast", "gpu_memory_clock_mhz"),
])
def test_bad_axis_values_are_refused_naming_the_key(key, value, words):
    with pytest.raises(ConfigError, match=words):
        validate_study(gpu_study(**{key: value}))


def test_power_caps_cross_batch_sizes_and_enter_the_cell_identity():
    cells, pruned = expand(validate_study(gpu_study(gpu_power_limit_w=[300, 500],
                                                    gpu_sm_clock_mhz=[[990, 1410]])))
    assert not pruned and len(cells) == 4
    combos = {(c.settings["batch_size"], c.config["measurement"]["gpu_power_limit_w"]) for c in cells}
    assert combos == {(2, 300.0), (2, 500.0), (4, 300.0), (4, 500.0)}
    assert all(c.config["measurement"]["gpu_sm_clock_mhz"] == [990, 1410] for c in cells)
    assert len({c.cell_id for c in cells}) == 4
    assert cells[0].measurement_axes.keys() == {"gpu_power_limit_w", "gpu_sm_clock_mhz"}


def test_unset_axes_leave_cell_ids_unchanged():
    """No GPU key enters the configuration of a study that does not set them, so its cells
    hash as before this feature; setting one (even a single value) makes new cells."""
    plain, _ = expand(validate_study(gpu_study()))
    assert all(not any(k.startswith("gpu_") and k != "gpus_per_cell"
                       for k in c.config["measurement"]) for c in plain)
    capped, _ = expand(validate_study(gpu_study(gpu_power_limit_w=300)))
    assert {c.cell_id for c in plain}.isdisjoint({c.cell_id for c in capped})


def test_axes_are_pruned_on_cpu_with_the_reason_in_matrix_csv():
    plan = plan_from_config(gpu_study(device="cpu", gpu_power_limit_w=[300, 500]))
    assert not plan.cells and len(plan.pruned) == 4
    rows = list(csv.DictReader(io.StringIO(plan.matrix_csv())))
    assert {r["gpu_power_limit_w"] for r in rows} == {"300.0", "500.0"}
    assert all(r["status"] == "pruned" and "need an NVIDIA GPU (measurement.device: cuda)"
               in r["reason"] for r in rows)


def test_matrix_csv_writes_a_clock_range_as_one_field():
    rows = list(csv.DictReader(io.StringIO(
        plan_from_config(gpu_study(gpu_sm_clock_mhz=[[990, 1410]])).matrix_csv())))
    assert {r["gpu_sm_clock_mhz"] for r in rows} == {"990-1410"}


def test_only_cells_that_change_a_gpu_take_the_gpu_control_resource():
    capped = plan_from_config(gpu_study(gpu_power_limit_w=300))
    plain = plan_from_config(gpu_study())
    assert {capped.gpu_control(c) for c in capped.cells} == {1}
    assert {plain.gpu_control(c) for c in plain.cells} == {0}


def test_example_study_validates_with_the_cli():
    path = ROOT / "config" / "examples" / "h100-power-caps.yaml"
    proc = subprocess.run([sys.executable, "-m", "llm_energy.cli", "validate", str(path)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = plan_from_config(yaml.safe_load(path.read_text()))
    caps = {c.config["measurement"]["gpu_power_limit_w"] for c in plan.cells.values()}
    batches = {c.settings["max_num_seqs"] for c in plan.cells.values()}
    assert len(caps) >= 3 and len(batches) >= 2 and len(plan.cells) == len(caps) * len(batches)


# ---------------------------------------------------------------- protocol phase


class Phase(GpuSettingsPhase):
    def __init__(self, tmp_path, **measurement):
        self.measurement = {"device": "cuda", "gpu_state_dir": str(tmp_path / "state"), **measurement}
        self.device = "cuda"
        self.detection = SimpleNamespace(gpus=[SimpleNamespace(ident="GPU-fake-0")], nvidia=None)
        self.log = lambda _m: None


@pytest.fixture
def fake(tmp_path, monkeypatch):
    gpus = FakeZeusGPUs(tmp_path / "gpus.json")
    monkeypatch.setattr(gc, "zeus_gpus", lambda: gpus)
    monkeypatch.setattr(gc, "gpu_idents", lambda g, nvml=None: ["GPU-fake-0"])
    monkeypatch.setattr(gpu_readback, "_nvml", lambda: gpus)  # the read-only clock getters
    return gpus


def test_phase_applies_reads_back_per_cycle_and_restores(tmp_path, fake):
    phase = Phase(tmp_path, gpu_power_limit_w=350.0, gpu_sm_clock_mhz=[990, 1410])
    warnings: list[str] = []
    phase._apply_gpu_settings(warnings)
    assert fake.gpu(0)["limit_mw"] == 350_000 and fake.gpu(0)["sm_lock"] == [990, 1410]
    samples = [SimpleNamespace(t_s=t, device="gpu0", sm_clock_mhz=1410.0, memory_clock_mhz=2619.0,
                               throttle_reasons=0x04) for t in (1.0, 1.5, 2.0)]
    cycle_warnings: list[str] = []
    columns = phase._gpu_cycle_columns(samples, 1.0, 2.0, cycle_warnings)
    assert columns == {"gpu_power_limit_w": 350.0, "gpu_sm_clock_mhz": "990-1410",
                       "gpu_power_limit_read_w": 350.0, "gpu_sm_clock_read_mhz": 1410.0,
                       "gpu_memory_clock_read_mhz": 2619.0, "gpu_throttle_reasons": ["sw power cap"],
                       "gpu_settings_mismatch": False}
    assert cycle_warnings == []
    # the GPU stops enforcing the cap mid-cell: flagged in that cycle
    state = fake.load()
    state["gpus"][0]["enforce_offset_w"] = 100.0
    fake.save(state)
    columns = phase._gpu_cycle_columns(samples, 1.0, 2.0, cycle_warnings)
    assert columns["gpu_settings_mismatch"] is True
    assert cycle_warnings == ["GPU setting not in effect: gpu0: power limit read back 450 W, asked 350 W"]
    assert phase._restore_gpu_settings() == []
    assert fake.is_default()


def test_phase_on_a_plain_gpu_cell_records_without_changing(tmp_path, fake):
    phase = Phase(tmp_path)
    phase._apply_gpu_settings([])
    columns = phase._gpu_cycle_columns([], 0.0, 1.0, [])  # no samples: the point reading
    assert columns["gpu_power_limit_read_w"] == DEFAULT_MW / 1000
    assert columns["gpu_sm_clock_read_mhz"] == 1980.0 and columns["gpu_memory_clock_read_mhz"] == 2619.0
    assert columns["gpu_settings_mismatch"] is None and "gpu_power_limit_w" not in columns
    assert not any(c.startswith(("set_", "reset_")) for c in fake.calls())
    phase._restore_gpu_settings()


def test_plain_gpu_cell_without_zeus_only_loses_the_read_back(tmp_path, monkeypatch):
    def broken():
        raise gc.GpuControlError("cannot open the GPUs through Zeus (NVML): no driver")
    monkeypatch.setattr(gc, "zeus_gpus", broken)
    warnings: list[str] = []
    Phase(tmp_path)._apply_gpu_settings(warnings)
    assert warnings == ["GPU settings not read back: cannot open the GPUs through Zeus (NVML): no driver"]
    with pytest.raises(gc.GpuControlError, match="no driver"):
        Phase(tmp_path, gpu_power_limit_w=300.0)._apply_gpu_settings([])


def test_phase_refuses_when_zeus_sees_other_gpus_than_the_cell_meters(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(gc, "gpu_idents", lambda g, nvml=None: ["GPU-other"])
    with pytest.raises(gc.GpuControlError, match="refusing to change GPUs the cell does not meter"):
        Phase(tmp_path, gpu_power_limit_w=300.0)._apply_gpu_settings([])
    assert fake.is_default()


def test_cell_runner_restores_when_the_backend_fails_after_the_cap_is_set(tmp_path, fake, monkeypatch):
    from llm_energy.measure.protocol import CellRunner
    from llm_energy.telemetry.meters import Detection
    from llm_energy.telemetry.meters.estimate import EstimateMeter

    cells, _ = expand(validate_study(gpu_study(gpu_power_limit_w=250)))
    config = {**cells[0].config, "cell_id": cells[0].cell_id}
    config["measurement"] = {**config["measurement"], "gpu_state_dir": str(tmp_path / "state"),
                             "threads": None}
    cell = CellRunner(config, "unused", log=lambda _m: None, meter=EstimateMeter(10.0))
    cell.detection = Detection(cell.meter, gpus=[SimpleNamespace(ident="GPU-fake-0", label="gpu0")])
    seen = {}

    class Failing:
        def load(self):
            seen["limit_mw"] = fake.gpu(0)["limit_mw"]
            raise RuntimeError("CUDA error: out of memory")

        def close(self):
            pass
    monkeypatch.setattr(cell, "_make_backend", lambda: Failing())
    monkeypatch.setattr(cell, "_preflight", list)
    with pytest.raises(RuntimeError, match="out of memory"):
        cell.run()
    assert seen["limit_mw"] == 250_000  # applied before the model loads
    assert fake.is_default() and not list((tmp_path / "state").glob("*.json"))


# ---------------------------------------------------------------- runner


HANGING_CHILD = """#!{python}
import sys, time
sys.path[:0] = [{tests!r}, {src!r}]
from fake_zeus import FakeZeusGPUs
from llm_energy.telemetry.gpu_control import GpuControl, GpuSettings
fake = FakeZeusGPUs({state!r})
GpuControl(fake, ["GPU-fake-0"], GpuSettings(250.0), {state_dir!r}, nvml=fake).apply()
time.sleep(120)  # hangs until the runner's timeout kills it (SIGTERM, then SIGKILL)
"""


def test_runner_resets_the_gpu_after_a_timed_out_child_and_records_the_axes(tmp_path, fake, monkeypatch):
    child = tmp_path / "python"
    child.write_text(HANGING_CHILD.format(python=sys.executable, tests=str(TESTS),
                                          src=str(ROOT / "src"), state=str(fake.path),
                                          state_dir=str(tmp_path / "state")))
    child.chmod(0o755)
    monkeypatch.setenv("LLM_ENERGY_PYTHON_TRANSFORMERS", str(child))
    monkeypatch.setattr(runner, "_KILL_GRACE_S", 1.0)
    plan = plan_from_config(gpu_study(gpu_power_limit_w=250))
    cell = plan.cell_params(next(iter(plan.cells)))
    cell["measurement"] = {**cell["measurement"], "timeout_s": 3.0,
                           "gpu_state_dir": str(tmp_path / "state")}
    out = tmp_path / "cell"
    with open(tmp_path / "log.txt", "w") as log:
        status = runner.run_cell(cell, "unused", out, log=log, project_dir=ROOT)
    assert status == "failed"
    assert fake.is_default(), (tmp_path / "log.txt").read_text()
    assert "restoring defaults left by process" in (tmp_path / "log.txt").read_text()
    (row,) = pq.read_table(out / "runs.parquet").to_pylist()
    assert row["error"].startswith("timeout") and row["gpu_power_limit_w"] == 250.0


def test_plain_cell_refuses_to_measure_a_gpu_left_capped_when_zeus_is_unavailable(tmp_path, fake,
                                                                                monkeypatch):
    gc.GpuControl(fake, ["GPU-fake-0"], gc.GpuSettings(250.0), tmp_path / "state",
                  log=lambda _m: None).apply()  # ... and the cell crashes
    def broken():
        raise gc.GpuControlError("cannot open the GPUs through Zeus (NVML): no driver")
    monkeypatch.setattr(gc, "zeus_gpus", broken)
    with pytest.raises(gc.GpuControlError, match="settings left by an earlier cell"):
        Phase(tmp_path)._apply_gpu_settings([])


def test_runner_restore_never_undoes_a_cell_that_took_the_gpu_meanwhile(tmp_path, fake):
    """Child A died with a cap. Before A's runner restores, cell B takes the GPU's lock,
    restores A's marker itself, sets its own cap (and here crashes, leaving its own marker):
    A's runner waits for the lock, sees no marker of A any more, and leaves B's cap alone."""
    import threading

    state = tmp_path / "state"
    gc.GpuControl(fake, ["GPU-fake-0"], gc.GpuSettings(250.0), state, log=lambda _m: None).apply()
    a_pid = os.getpid()
    marker = state / "GPU-fake-0.json"
    b_lock = gc.GpuLocks(state, ["GPU-fake-0"], exclusive=True).__enter__()
    result: list[list[str]] = []
    runner_a = threading.Thread(target=lambda: result.append(gc.restore_after_child(
        {"device": "cuda", "gpu_state_dir": str(state)}, a_pid, log=lambda _m: None)))
    runner_a.start()
    time.sleep(0.5)  # A's runner saw A's marker and waits for the lock
    assert runner_a.is_alive() and fake.gpu(0)["limit_mw"] == 250_000
    fake.set_power_management_limit(0, 400_000)  # B: restored A's marker, set its own cap
    marker.write_text(marker.read_text().replace(f'"pid": {a_pid}', '"pid": 1'))
    b_lock.__exit__()
    runner_a.join(timeout=30)
    assert result == [[]] and fake.gpu(0)["limit_mw"] == 400_000


def test_summary_keeps_the_axes_as_settings_and_aggregates_the_read_back():
    import pandas as pd

    from llm_energy.analysis.summary import summarise

    def row(cell, cycle, limit, read, mismatch, reasons):
        return {"cell_id": cell, "cycle": cycle, "model": "m", "backend": "vllm",
                "max_num_seqs": 64, "gpu_power_limit_w": limit, "device": "cuda",
                "status": "ok", "error": None, "warnings": [], "total_energy_j": 100.0,
                "output_tokens": 50, "duration_s": 2.0, "requests": 5,
                "gpu_power_limit_read_w": read, "gpu_settings_mismatch": mismatch,
                "gpu_throttle_reasons": reasons}
    runs = pd.DataFrame([row("a", 0, 300.0, 300.0, False, ["sw power cap"]),
                         row("a", 1, 300.0, 300.0, False, []),
                         row("b", 0, 500.0, 500.0, False, []),
                         row("b", 1, 500.0, 450.0, True, ["sw thermal"])])
    summary = summarise(runs, resamples=10).set_index("cell_id")
    assert summary.loc["a", "gpu_power_limit_w"] == 300.0 and summary.loc["b", "gpu_power_limit_w"] == 500.0
    assert summary.loc["b", "gpu_power_limit_read_w"] == 475.0
    assert summary.loc["a", "gpu_settings_mismatch"] == 0 and summary.loc["b", "gpu_settings_mismatch"] == 1
    assert list(summary.loc["a", "gpu_throttle_reasons"]) == ["sw power cap"]
    ours = ["gpu_power_limit_w", "gpu_power_limit_read_w", "gpu_settings_mismatch",
            "gpu_throttle_reasons"]
    plain = summarise(runs.drop(columns=ours), resamples=10)  # a study without the axes, on CPU
    assert not set(ours) & set(plain.columns)
