"""The typed cell spec crossing the parent/child process boundary: one set of defaults (the
study config's and the backend settings class's), and the cell id from one function."""

import json
import time

import pytest
from conftest import DEMO_CONFIG, small_study

from llm_energy.backends import registry
from llm_energy.measure.protocol import CellRunner
from llm_energy.study.cellspec import CellSpec, cell_id_of
from llm_energy.study.config import (
    MeasurementConfig,
    WorkloadConfig,
    load_study,
    validate_study,
)
from llm_energy.study.matrix import expand
from llm_energy.telemetry.meters.base import Meter


class PowerMeter(Meter):
    """Cumulative energy of a constant power on the real monotonic clock."""

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


def partial_cell(tmp_path) -> dict:
    """A cell as an older writer, or a hand-made one, gives it: only some measurement keys."""
    return {"cell_id": "c" * 12, "model": {"name": "tiny"}, "backend": "transformers",
            "settings": {"batch_size": 2},
            "workload": {"num_prompts": 4, "input_tokens": 16, "output_tokens": 8},
            "measurement": {"idle_duration_s": 0.05, "idle_revalidate_s": 0.03,
                            "idle_cache_dir": str(tmp_path / "idle")}}


def test_missing_keys_take_the_config_defaults():
    spec = CellSpec.of(partial_cell(__import__("pathlib").Path("/tmp")))
    assert spec.measurement.idle_cache_ttl_s == MeasurementConfig().idle_cache_ttl_s == 3600.0
    assert spec.workload.arrival == WorkloadConfig().arrival
    # Settings: the backend's settings class fills the rest (no copied defaults).
    defaults = registry.get("transformers").config.cell_defaults()
    assert spec.settings == {**defaults, "batch_size": 2}
    assert spec.settings["dtype"] == "float32" and spec.settings["torch_compile"] is False


def test_idle_baseline_is_cached_with_the_config_default_ttl(tmp_path):
    """The measuring side used to fall back to a TTL of 0 (cache off) where the config's
    default is 3600 s: a cell without the key re-measured its idle baseline every time."""
    runner = CellRunner(partial_cell(tmp_path), "unused", meter=PowerMeter(5.0))
    assert runner.measurement["idle_cache_ttl_s"] == 3600.0
    assert runner._idle_power_w(NullBackend(), []) == pytest.approx(5.0, rel=0.05)
    assert runner.idle_baseline == "measured"
    again = CellRunner(partial_cell(tmp_path), "unused", meter=PowerMeter(5.0))
    assert again._idle_power_w(NullBackend(), []) == pytest.approx(5.0, rel=0.05)
    assert again.idle_baseline == "cached"


def test_cell_ids_are_the_spec_identity():
    for study in (load_study(DEMO_CONFIG),
                  validate_study(small_study(backends={
                      "transformers": {"batch_size": [1, 2]},
                      "vllm": {"max_num_seqs": [4], "mode": ["offline", "server"]}})),
                  validate_study(small_study(measurement={
                      "device": "cuda", "gpu_power_limit_w": [200, 300],
                      "gpu_sm_clock_mhz": [1500, [900, 1200]]}))):
        cells, _ = expand(study)
        for cell in cells:
            spec = CellSpec.of({**cell.config, "cell_id": cell.cell_id})
            # A cell holds one value of each GPU axis (a clock range is one value).
            assert {k: spec.as_dict()["measurement"][k] for k in cell.measurement_axes} \
                == cell.measurement_axes
            assert spec.identity() == cell.cell_id == cell_id_of(spec.as_dict())


def test_default_study_cell_ids_are_unchanged():
    """The registry and the cell spec moved code, not identities: the default study's ids as
    main computed them before the change (commit 0bc91c7, release-1 ids). Change this list
    only with a deliberate change of the hash policy (`identity.cell_hash`)."""
    cells, _ = expand(load_study(DEMO_CONFIG))
    assert sorted(c.cell_id for c in cells) == sorted([
        "cdfef8dae121", "f12439d1a029", "d911ddbf9dce", "1ff90382aaf3", "5e419bb9d821",
        "3be9b7bcba42", "7cf6c38d07ae", "50c839f5d443"])


def test_the_spec_round_trips_through_json(tmp_path):
    spec = CellSpec.of(partial_cell(tmp_path))
    again = CellSpec.model_validate_json(json.dumps(spec.as_dict()))
    assert again == spec and again.identity() == spec.identity()


def test_unknown_backend_or_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'nosuch'"):
        CellSpec.of({**partial_cell(tmp_path), "backend": "nosuch"})
    with pytest.raises(ValueError, match="extra"):
        CellSpec.of({**partial_cell(tmp_path), "measurment": {}})
