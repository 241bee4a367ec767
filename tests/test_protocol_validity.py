"""Protocol pieces: the idle-baseline cache (TTL, re-validation on drift), the per-cycle
validity flags, carbon/cost in aggregation, and one real in-process cell on this machine."""

import json
import os
import re
import time

import pandas as pd
import pytest
from conftest import ROOT, small_study
from fake_hw import FakeGpu, FakeNvml, nvidia_for

from llm_energy.analysis.summary import add_carbon_and_cost
from llm_energy.measure.idle_cache import IdleCache, IdleEntry, drifted
from llm_energy.measure.protocol import CellRunner
from llm_energy.study.config import CarbonConfig, validate_study
from llm_energy.study.matrix import expand
from llm_energy.telemetry.meters import Detection
from llm_energy.telemetry.meters.base import Meter, WindowEnergy
from llm_energy.telemetry.sampler import Sample


def cell_config(tmp_path, **measurement):
    study = small_study()
    study["measurement"].update({"idle_duration_s": 0.05, "idle_revalidate_s": 0.03,
                                 "idle_cache_dir": str(tmp_path / "idle"), **measurement})
    cells, _ = expand(validate_study(study))
    return {**cells[0].config, "cell_id": cells[0].cell_id}


class PowerMeter(Meter):
    """Cumulative energy of a constant power on the real monotonic clock (no resolution
    limit, so even a short idle window is exact)."""

    min_window_s = 0.0

    def __init__(self, power_w):
        super().__init__()
        self.power_w = power_w

    @property
    def sources(self):
        return {"cpu": "rapl"}

    def read_j(self):
        return {"cpu": self.power_w * time.perf_counter()}


class NullBackend:
    def synchronize(self):
        pass


def idle(tmp_path, power_w, **measurement):
    runner = CellRunner(cell_config(tmp_path, **measurement), "unused", meter=PowerMeter(power_w))
    warnings = []
    value = runner._idle_power_w(NullBackend(), warnings)
    return value, runner.idle_baseline, warnings


# ---------------------------------------------------------------- idle baseline cache


def test_idle_baseline_cached_revalidated_and_remeasured_on_drift(tmp_path):
    first, how, warnings = idle(tmp_path, 50.0)
    assert how == "measured" and first == pytest.approx(50.0, rel=2e-3) and warnings == []
    assert len(list((tmp_path / "idle").glob("*.json"))) == 1
    # 4% off: within the 10% tolerance, the cached value is used.
    again, how, warnings = idle(tmp_path, 52.0)
    assert how == "cached" and again == pytest.approx(50.0, rel=2e-3) and warnings == []
    # 60% off: re-measured, flagged, cache updated.
    moved, how, warnings = idle(tmp_path, 80.0)
    assert how == "measured" and moved == pytest.approx(80.0, rel=2e-3)
    assert any(re.search(r"idle power drifted from the cached (49\.9\d|50\.0\d) W to "
                         r"(79\.9\d|80\.0\d) W", w) for w in warnings), warnings
    entry = json.loads(next((tmp_path / "idle").glob("*.json")).read_text())
    assert entry["idle_power_w"] == pytest.approx(80.0, rel=2e-3)


def test_idle_cache_off_and_expiry(tmp_path):
    _, how, _ = idle(tmp_path, 50.0, idle_cache_ttl_s=0)
    assert how == "measured" and not (tmp_path / "idle").exists()
    now = [1000.0]
    cache = IdleCache(tmp_path / "c", ttl_s=60, clock=lambda: now[0])
    cache.put("k", IdleEntry(40.0, 1000.0, 30.0, "host", ["GPU-a"], {"gpu": "nvml-counter"}, "vllm"))
    now[0] = 1059.0
    assert cache.get("k").idle_power_w == 40.0
    now[0] = 1061.0
    assert cache.get("k") is None            # older than the TTL
    now[0] = 900.0
    assert cache.get("k") is None            # a clock set back does not make it fresh
    (tmp_path / "c" / "k.json").write_text("{not json")
    now[0] = 1001.0
    assert cache.get("k") is None            # corrupt: measure again
    assert drifted(0.2, 0.25, 0.1) is False and drifted(100.0, 111.0, 0.1) is True


# ---------------------------------------------------------------- cycle validity flags


def gpu_samples(start, end, period=0.1, power=100.0, temps=(40.0, 55.0), throttle=0,
                gap=None):
    out = []
    n = int(round((end - start) / period))
    for k in range(n + 1):
        t = start + k * period
        if gap and gap[0] < t < gap[1]:
            continue
        temp = temps[0] + (temps[1] - temps[0]) * k / n
        out.append(Sample(t, "gpu0", power, "nvml-power", temp, 90.0, 1000.0, 1400.0,
                          throttle if k % 2 else 0))
    return out


def test_cycle_flags_gap_drift_throttle_neighbour_and_counter_disagreement(tmp_path):
    nvml = FakeNvml([FakeGpu("GPU-a", [0], processes=[os.getpid(), 31337])])
    runner = CellRunner(cell_config(tmp_path), "unused", meter=PowerMeter(1.0))
    nvidia = nvidia_for(nvml, ["0"])
    runner.detection = Detection(runner.meter, nvidia, nvidia.gpus)
    samples = gpu_samples(100.0, 110.0, throttle=0x40 | 0x04, gap=(103.0, 106.0))
    window = WindowEnergy(10.0, {"gpu": 2000.0, "cpu": None, "dram": None},
                          {"gpu": "nvml-counter"})
    warnings, columns = runner._cycle_validity(0, 100.0, 110.0, window, samples,
                                               [("cycle0", 100.0, 110.0)])
    text = "\n".join(warnings)
    # 103.0 .. 106.0 without samples: 3.0 s gap, 2.9 s uncovered of 10 s.
    assert "telemetry of gpu0 covers 71% of cycle 0 (< 95%; longest gap 3.00 s)" in text
    assert "gpu0 temperature drifted 40->55 degC within cycle 0 (> 10)" in text
    assert "gpu0 throttled (hw thermal) in" in text
    assert ("gpu0: NVML reported clocks lowered by power management (sw power cap) in "
            "35/72 samples of cycle 0 while drawing 100-100 W") in text
    assert "gpu0: pid 31337 (512 MiB)" in text and str(os.getpid()) not in text
    assert "disagree by more than 25%" in text
    assert columns["gpu_power_integral_j"] == pytest.approx(1000.0)


def test_clean_cycle_has_no_flags(tmp_path):
    nvml = FakeNvml([FakeGpu("GPU-a", [0])])
    runner = CellRunner(cell_config(tmp_path), "unused", meter=PowerMeter(1.0))
    nvidia = nvidia_for(nvml, ["0"])
    runner.detection = Detection(runner.meter, nvidia, nvidia.gpus)
    samples = gpu_samples(100.0, 110.0, temps=(50.0, 53.0))
    window = WindowEnergy(10.0, {"gpu": 1010.0, "cpu": None, "dram": None},
                          {"gpu": "nvml-counter"})
    warnings, columns = runner._cycle_validity(0, 100.0, 110.0, window, samples,
                                               [("cycle0", 100.0, 110.0)])
    assert warnings == []
    assert columns["gpu_mig_whole_gpu"] is False    # a whole GPU, not a MIG slice
    # A later cycle starting 12 degC hotter than the first is flagged.
    later = gpu_samples(120.0, 130.0, temps=(62.0, 63.0))
    warnings, _ = runner._cycle_validity(1, 120.0, 130.0, window, later,
                                         [("cycle1", 120.0, 130.0)])
    assert warnings == ["gpu0 started cycle 1 at 62 degC vs 50 degC for the first cycle (> 10)"]


def test_a_mig_slice_metered_as_its_whole_gpu_is_flagged_in_the_rows(tmp_path):
    from fake_hw import ZeusOpener
    from test_meters_sources import NO_RAPL, node

    from llm_energy.telemetry.meters import detect

    nvml = node()
    runner = CellRunner(cell_config(tmp_path), "unused", meter=PowerMeter(1.0))
    runner.detection = detect("cuda", "auto", 10.0, nvml=nvml, zeus=ZeusOpener(nvml),
                              powercap_root=NO_RAPL, environ={"CUDA_VISIBLE_DEVICES": "MIG-1b9f"})
    window = WindowEnergy(1.0, {"gpu": 5.0, "cpu": None, "dram": None}, {"gpu": "nvml-counter"})
    _, columns = runner._cycle_validity(0, 0.0, 1.0, window, [], [("cycle0", 0.0, 1.0)])
    assert columns["gpu_mig_whole_gpu"] is True
    assert any("metered as the whole GPU" in w for w in runner.detection.warnings)


def test_negative_net_energy_is_flagged(tmp_path):
    runner = CellRunner(cell_config(tmp_path), "unused", meter=PowerMeter(1.0))
    window = WindowEnergy(1.0, {"gpu": None, "cpu": 5.0, "dram": None}, {"cpu": "rapl"})
    warnings, columns = runner._cycle_validity(0, 0.0, 1.0, window, [], [("cycle0", 0.0, 1.0)],
                                               -0.5)
    assert any("net energy negative (-0.5 J) in cycle 0" in w for w in warnings)
    assert columns["gpu_mig_whole_gpu"] is None      # no NVIDIA GPU
    warnings, _ = runner._cycle_validity(0, 0.0, 1.0, window, [], [("cycle0", 0.0, 1.0)], 0.5)
    assert warnings == []


def test_too_few_samples_in_a_phase_is_flagged(tmp_path):
    runner = CellRunner(cell_config(tmp_path), "unused", meter=PowerMeter(1.0))
    samples = [Sample(1.0, "cpu", None, None, None, 5.0, 1.0, None),
               Sample(1.5, "cpu", None, None, None, 5.0, 1.0, None)]
    assert runner._phase_sample_warnings(samples, [("load", 0.0, 1.2), ("idle", 1.2, 2.0)]) == [
        "fewer than 2 telemetry samples (1) of cpu in phase 'load'",
        "fewer than 2 telemetry samples (1) of cpu in phase 'idle'"]


# ---------------------------------------------------------------- carbon and cost


def test_carbon_and_cost_per_1k_tokens():
    summary = pd.DataFrame({"cell_id": ["a", "b"], "energy_per_output_token_j": [3.6, None],
                            "energy_per_output_token_j_ci95_low": [1.8, None],
                            "energy_per_output_token_j_ci95_high": [5.4, None]})
    out = add_carbon_and_cost(summary, {"grid_intensity_g_per_kwh": 400.0, "pue": 1.5,
                                        "price_per_kwh": 0.2, "currency": "EUR"})
    # 3.6 J/token x 1000 = 3600 J = 0.001 kWh; x 1.5 PUE = 0.0015 kWh at the meter.
    assert out.loc[0, "energy_kwh_per_1k_tokens"] == pytest.approx(0.001)
    assert out.loc[0, "co2e_g_per_1k_tokens"] == pytest.approx(0.6)
    assert out.loc[0, "cost_per_1k_tokens"] == pytest.approx(0.0003)
    assert out.loc[0, "co2e_g_per_1k_tokens_ci95_low"] == pytest.approx(0.3)
    assert out.loc[0, "co2e_g_per_1k_tokens_ci95_high"] == pytest.approx(0.9)
    assert pd.isna(out.loc[1, "co2e_g_per_1k_tokens"])      # no energy: no made-up carbon
    assert (out["currency"] == "EUR").all() and (out["pue"] == 1.5).all()
    defaults = add_carbon_and_cost(summary)
    assert defaults.loc[0, "co2e_g_per_1k_tokens"] == pytest.approx(0.001 * 1.58 * 480.0)


def test_carbon_keys_documented_and_validated():
    readme = (ROOT / "config" / "README.md").read_text()
    for name in CarbonConfig.model_fields:
        assert f"`{name}`" in readme, name
    with pytest.raises(Exception, match="pue"):
        validate_study(small_study(carbon={"pue": 0.5}))


# ---------------------------------------------------------------- the real path, in process


def test_real_cell_in_process_caches_idle_and_flags_the_estimate(tmp_path, demo_model_dir):
    config = cell_config(tmp_path, idle_duration_s=0.3, idle_revalidate_s=0.2, cycles=1,
                         idle_drift_tolerance=10.0)
    out1 = CellRunner(config, str(demo_model_dir), log=lambda m: None).run()
    out2 = CellRunner(config, str(demo_model_dir), log=lambda m: None).run()
    run1, run2 = out1.runs[0], out2.runs[0]
    assert (run1["idle_baseline"], run2["idle_baseline"]) == ("measured", "cached")
    assert run2["idle_power_w"] == run1["idle_power_w"]
    assert run1["energy_source"] == "estimate" and run1["total_energy_j"] > 0
    assert any("estimated" in w for w in run1["warnings"])
    assert not any("fewer than 2 telemetry samples" in w for w in run1["warnings"])
    phases = {row["phase"] for row in out1.timeseries}
    assert {"load", "idle", "warmup", "cycle0"} <= phases


def test_tokens_streamed_several_to_a_chunk_are_flagged_not_hidden(tmp_path):
    """Tokens read at one time whose record does not say so (0 ms gaps) stay in the ITL
    percentiles (what the client saw) and the cycle says so."""
    from llm_energy.backends.base import RequestRecord

    runner = CellRunner(cell_config(tmp_path), "unused", meter=PowerMeter(1.0))
    # Request 0: one token per chunk; request 1: tokens 2-3 and 4-5 arrived together.
    records = [RequestRecord(0, 16, 5, 10.0, token_times_s=[10.1, 10.2, 10.3, 10.4, 10.5]),
               RequestRecord(1, 16, 5, 10.0, token_times_s=[10.1, 10.3, 10.3, 10.5, 10.5])]
    window = WindowEnergy(1.0, {"cpu": 5.0, "gpu": None, "dram": None}, {"cpu": "rapl"})
    row, _ = runner._cycle_rows(0, records, 10.0, 11.0, window, None, [], None)
    assert ("2 of 8 inter-token gaps in cycle 0 are under 0.2 ms, shorter than any decode step "
            "(1 request(s) delivered mostly in bursts") in "\n".join(row["warnings"])
    assert row["itl_ms_p50"] == pytest.approx(100.0) and row["tpot_ms_p50"] == pytest.approx(100.0)

    records[1].token_times_s = [10.1, 10.2, 10.3, 10.4, 10.5]
    row, _ = runner._cycle_rows(0, records, 10.0, 11.0, window, None, [], None)
    assert not any("inter-token gaps" in w for w in row["warnings"])
