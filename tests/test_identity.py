"""Cell identity: what is measured is hashed; operational and analysis-only settings are not;
keys added with a default after release 1 leave existing ids alone. (Snakemake's own view
of the same rules, after a real run: tests/test_reruns.py.)"""

import copy
import re
from typing import Annotated

import pytest
import yaml
from conftest import DEMO_CONFIG, ROOT, small_study
from pydantic import BaseModel, ConfigDict, Field

from llm_energy.backends import registry
from llm_energy.study import config as c
from llm_energy.study import identity as ident
from llm_energy.study.config import load_study, validate_study
from llm_energy.study.identity import cell_hash, identity, roles
from llm_energy.study.matrix import expand
from llm_energy.study.plan import plan_from_config

#: The default study's cell ids as release 1 computed them (the whole resolved config
#: hashed): an upgrade must not move finished cells.
DEFAULT_STUDY_IDS = ["cdfef8dae121", "f12439d1a029", "d911ddbf9dce", "1ff90382aaf3",
                     "5e419bb9d821", "3be9b7bcba42", "7cf6c38d07ae", "50c839f5d443"]

OPERATIONAL = sorted(k for k, role in roles().items() if role == c.OPERATIONAL)


def ids(study: dict) -> list[str]:
    return [cell.cell_id for cell in expand(validate_study(study))[0]]


def other_value(key: str) -> object:
    """A valid value other than the default for a dotted config key."""
    section, name = key.split(".")
    model = {"measurement": c.MeasurementConfig, "workload": c.WorkloadConfig}[section]
    default = model.model_fields[name].default
    if isinstance(default, str):
        return default + "-moved"
    if isinstance(default, bool):
        return not default
    return default + 1 if isinstance(default, int) else default * 2 + 1


def with_key(study: dict, key: str, value: object) -> dict:
    study = copy.deepcopy(study)
    node = study
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    return study


def test_default_study_keeps_its_release_1_ids():
    cells, _ = expand(load_study(DEMO_CONFIG))
    assert [cell.cell_id for cell in cells] == DEFAULT_STUDY_IDS
    # ... and its measure params are what release 1 recorded (the whole config as it was
    # then, in the same order), so Snakemake reruns nothing after the upgrade either.
    plan = plan_from_config(yaml.safe_load(DEMO_CONFIG.read_text()), ROOT)
    for cell in cells:
        release_1 = {**as_in_release_1(cell.config, ident.RELEASE_1_KEYS, cell.backend),
                     "cell_id": cell.cell_id}
        assert plan.cell_identity(cell.cell_id) == release_1
        assert repr(plan.cell_identity(cell.cell_id)) == repr(release_1)  # order too


def test_max_cycles_written_out_at_its_default_moves_no_id():
    """`measurement.max_cycles` defaults to `cycles`: writing that value out is the same
    study (same cell ids and measure params); another value makes new cells."""
    study = yaml.safe_load(DEMO_CONFIG.read_text())
    study["measurement"]["max_cycles"] = study["measurement"]["cycles"]
    assert ids(study) == DEFAULT_STUDY_IDS
    base = small_study()
    explicit = with_key(base, "measurement.max_cycles", base["measurement"]["cycles"])
    assert ids(explicit) == ids(base)
    same, plain = plan_from_config(explicit, ROOT), plan_from_config(base, ROOT)
    assert [same.cell_identity(i) for i in same.cells] == [plain.cell_identity(i)
                                                           for i in plain.cells]
    more = with_key(base, "measurement.max_cycles", base["measurement"]["cycles"] + 1)
    assert not set(ids(more)) & set(ids(base))


def as_in_release_1(config: dict, keys: dict, backend: str) -> dict:
    """`config` with only the keys release 1 had."""
    out = {}
    for key, value in config.items():
        if key == "settings":  # a backend's release-1 settings are in its registry spec
            sub = dict.fromkeys(registry.get(backend).release_1_settings)
        elif key not in keys:
            continue
        else:
            sub = keys[key]
        out[key] = as_in_release_1(value, sub, backend) if isinstance(sub, dict) else value
    return out


def test_every_operational_key_is_documented_and_the_expected_ones():
    assert {"measurement.timeout_s", "measurement.retries", "measurement.idle_cache_dir",
            "measurement.idle_cache_ttl_s"} <= set(OPERATIONAL)
    assert roles()["carbon"] == c.ANALYSIS_ONLY and roles()["measurement.cycles"] == c.MEASURED
    readme = (ROOT / "config" / "README.md").read_text()
    section = readme.split("## What makes a cell", 1)[1].split("\n## ", 1)[0]
    listed = dict(re.findall(r"^\| `([a-z_.]+)` \| (measured|operational|analysis-only) \|",
                             section, re.MULTILINE))
    assert {k: r for k, r in listed.items() if r != c.MEASURED} == {
        k: r for k, r in roles().items() if r != c.MEASURED}


@pytest.mark.parametrize("key", OPERATIONAL)
def test_operational_key_changes_no_id(key):
    base = small_study()
    assert ids(with_key(base, key, other_value(key))) == ids(base)


@pytest.mark.parametrize("key", ["measurement.cycles", "measurement.warmup.cv_threshold",
                                 "measurement.cpu_power_per_core_w", "workload.seed",
                                 "models.0.demo.seed", "backends.transformers.dtype"])
def test_measured_key_changes_every_id_it_touches(key):
    base = small_study()
    changed = copy.deepcopy(base)
    if key.startswith("models."):
        changed["models"][0]["demo"]["seed"] = 7
    elif key == "backends.transformers.dtype":
        changed["backends"]["transformers"]["dtype"] = ["bfloat16"]
    else:
        changed = with_key(base, key, {"measurement.cycles": 5, "workload.seed": 3}.get(
            key, 0.5))
    assert not set(ids(changed)) & set(ids(base))


def test_carbon_changes_no_id():
    base = small_study()
    assert ids({**base, "carbon": {"pue": 1.1, "price_per_kwh": 0.3}}) == ids(base)


def test_a_new_key_with_its_default_changes_no_id(monkeypatch):
    """A release adds `measurement.settle_s` and a transformers axis, both defaulted:
    finished cells keep their ids; setting either to another value makes new cells."""
    study = validate_study(small_study())
    cells, _ = expand(study)

    class Gpu(c._Strict):
        power_limit_w: float | None = None
        sm_clock_mhz: int | None = None

    class Measurement2(c.MeasurementConfig):
        settle_s: float = Field(1.0, gt=0)
        gpu: Gpu = Gpu()

    class Transformers2(registry.get("transformers").config):
        num_beams: Annotated[list[int], Field(min_length=1)] = [1]

    monkeypatch.setattr(ident, "MeasurementConfig", Measurement2)
    monkeypatch.setattr(ident, "_backend_class", lambda name: Transformers2)

    def grown(cell, settle_s=1.0, num_beams=1, power_limit_w=None):
        config = copy.deepcopy(cell.config)
        config["measurement"]["settle_s"] = settle_s
        config["measurement"]["gpu"] = {"power_limit_w": power_limit_w, "sm_clock_mhz": None}
        config["settings"]["num_beams"] = num_beams
        return config

    assert [cell_hash(grown(cell)) for cell in cells] == [cell.cell_id for cell in cells]
    assert identity(grown(cells[0])) == identity(cells[0].config)
    assert cell_hash(grown(cells[0], settle_s=5.0)) != cells[0].cell_id
    assert cell_hash(grown(cells[0], num_beams=4)) != cells[0].cell_id
    limited = identity(grown(cells[0], power_limit_w=300.0))
    assert limited["measurement"]["gpu"] == {"power_limit_w": 300.0}  # defaults left out


def test_a_new_analysis_section_in_a_cell_changes_no_id(monkeypatch):
    """An `slo:` section (analysis-only) stays out of the hash even if copied into a cell."""
    class Slo(BaseModel):
        model_config = ConfigDict(json_schema_extra={c.ROLE_KEY: c.ANALYSIS_ONLY})
        ttft_s: float = 1.0

    class Study2(c.StudyConfig):
        slo: Slo = Slo()

    monkeypatch.setattr(ident, "StudyConfig", Study2)
    cell = expand(validate_study(small_study()))[0][0]
    assert cell_hash({**cell.config, "slo": {"ttft_s": 0.2}}) == cell.cell_id


def test_release_1_operational_keys_are_still_operational():
    for section, keys in ident.RELEASE_1_OPERATIONAL.items():
        for key, value in keys.items():
            assert roles()[f"{section}.{key}"] == c.OPERATIONAL
            model = {"measurement": c.MeasurementConfig, "workload": c.WorkloadConfig}[section]
            assert model.model_fields[key].default == value


def test_a_non_default_operational_setting_still_reaches_the_measurement():
    study = with_key(small_study(), "measurement.timeout_s", 77)
    plan = plan_from_config(study, ROOT)
    cell_id = next(iter(plan.cells))
    assert plan.cell_params(cell_id)["measurement"]["timeout_s"] == 77
    assert plan.cell_identity(cell_id)["measurement"]["timeout_s"] == 1800.0  # pinned


def test_every_config_model_refuses_non_finite_floats():
    study_modules = {c.__name__, "llm_energy.study.sections", "llm_energy.study.base",
                     "llm_energy.study.model_spec"}
    models = [m for m in vars(c).values()
              if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ in study_modules]
    assert len(models) >= 10
    for model in models:
        assert model.model_config.get("allow_inf_nan") is False, model.__name__
