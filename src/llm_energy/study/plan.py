"""What the Snakefile needs from the package: the validated study and its cells.

Kept here (not in the .smk files) so it is tested like the rest of the logic."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_energy.backends import registry
from llm_energy.backends.checkpoint_facts import gguf_header
from llm_energy.study.config import (
    ConfigError,
    ModelConfig,
    StudyConfig,
    load_study,
    validate_study,
)
from llm_energy.study.identity import identity
from llm_energy.study.layout import check_owner, study_dir, study_record
from llm_energy.study.matrix import Cell, PrunedCell, expand, matrix_csv
from llm_energy.study.workload_spec import WORKLOAD_DIR, WorkloadSpec, workload_key

DEFAULT_CONFIG = "config/config.yaml"
MODELS_DIR = "resources/models"
#: GGUF models converted by the rule `gguf_model`, one directory per model name.
GGUF_MODELS_DIR = f"{MODELS_DIR}/gguf"


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


#: Memory assumed for a hub model's weights while loading (MiB; twice 8 GiB, an 8B model in
#: bf16 would need more): Snakemake needs a number; the profile can override it.
HUB_MODEL_MEM_MB = 16384


@dataclass
class Plan:
    study: StudyConfig
    cells: dict[str, Cell]
    pruned: list[PrunedCell]
    # Where the backend environments live (.venvs/<backend>): the workflow's directory.
    project_dir: str = "."
    # The config file(s) the study came from (absolute; several joined with `;`): they own
    # the study's folder (llm_energy.study.layout).
    config_file: str = ""
    # Models by name: the Snakefile asks per job, so a scan of the list would make a
    # 10,000-cell study quadratic.
    models: dict[str, ModelConfig] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.models = {m.name: m for m in self.study.models}

    @property
    def results_dir(self) -> str:
        """The study's folder, `results/<study name>` (relative to the working directory)."""
        return study_dir(self.study.name)

    def record(self) -> dict[str, Any]:
        """The content of the study's `study.json` (name, config hash, config file)."""
        return study_record(self.study.name, self.cells, self.config_file)

    def model_path(self, model_name: str) -> str:
        model = self.models[model_name]
        if model.demo is not None:
            return f"{MODELS_DIR}/{model.name}"
        if model.gguf is not None:
            return f"{GGUF_MODELS_DIR}/{model.name}"
        return model.path if model.path is not None else str(model.hub_id)

    def model_input(self, model_name: str) -> list[str]:
        """The files a cell's measurement depends on (demo and GGUF models are built by the
        DAG)."""
        model = self.models[model_name]
        if model.demo is not None or model.gguf is not None:
            return [f"{self.model_path(model_name)}/config.json"]
        if model.path is not None:
            return [str(Path(model.path) / "config.json")]
        return []

    def demo_spec(self, model_name: str) -> dict[str, Any]:
        demo = self.models[model_name].demo
        assert demo is not None, f"model {model_name} is not a demo model"
        return demo.model_dump(mode="json")

    def gguf_spec(self, model_name: str) -> dict[str, Any]:
        """The `gguf_model` rule's `spec` param: the study's `gguf:` entry (a new dtype or file
        converts again)."""
        gguf = self.models[model_name].gguf
        assert gguf is not None, f"model {model_name} is not a GGUF model"
        return gguf.model_dump(mode="json", exclude_none=True)

    def gguf_file(self, model_name: str) -> str:
        """The GGUF file the `gguf_model` rule converts (absolute; inside an installed package
        for `gguf: {package: ...}`), its input: replacing the file converts again."""
        gguf = self.models[model_name].gguf
        assert gguf is not None, f"model {model_name} is not a GGUF model"
        return str(gguf.file_path())

    def cell_params(self, cell_id: str) -> dict[str, Any]:
        """Everything the measurement needs: the cell's resolved configuration (measured and
        operational settings, defaults filled in) and its id."""
        cell = self.cells[cell_id]
        return {**cell.config, "cell_id": cell.cell_id,
                "workload_file": self.workload_file(cell_id)}

    # ------------------------------------------------------------ workloads

    @functools.cached_property
    def workloads(self) -> dict[str, tuple[dict[str, Any], str]]:
        """Workload files to build, by key: (the workload's `WorkloadSpec` keys, model name).
        One per distinct workload and model (the model's tokenizer encodes it)."""
        out: dict[str, tuple[dict[str, Any], str]] = {}
        for cell in self.cells.values():
            spec = self._workload_spec(cell)
            out.setdefault(workload_key(spec, cell.config["model"]), (spec, cell.model))
        return out

    @staticmethod
    def _workload_spec(cell: Cell) -> dict[str, Any]:
        return {k: v for k, v in cell.config["workload"].items() if k in WorkloadSpec.model_fields}

    @functools.cached_property
    def _workload_files(self) -> dict[str, str]:
        # Snakemake calls the input functions several times per job: hash each cell once.
        return {cell_id: f"{WORKLOAD_DIR}/"
                         f"{workload_key(self._workload_spec(cell), cell.config['model'])}.parquet"
                for cell_id, cell in self.cells.items()}

    def workload_file(self, cell_id: str) -> str:
        """The workload file a cell's measurement reads (an input of its measure job)."""
        return self._workload_files[cell_id]

    def workload_params(self, key: str) -> dict[str, Any]:
        spec, model = self.workloads[key]
        return {"spec": spec, "model_path": self.model_path(model),
                "trust_remote_code": self.models[model].trust_remote_code}

    def workload_context_limits(self, key: str) -> list[tuple[int, str]]:
        """The context limits (tokens, where) known for the cells that read workload `key`:
        each one's backend context setting (registry: `context_setting`) and its model's
        position limit. The workload rule checks the built requests against them (dataset
        prompts have their lengths only then). Read from the study as it is, not a param:
        a param would rebuild the file, and so re-measure every cell reading it."""
        limits: dict[tuple[int, str], None] = {}
        for cell_id, cell in self.cells.items():
            if self.workload_file(cell_id) != f"{WORKLOAD_DIR}/{key}.parquet":
                continue
            setting = registry.get(cell.backend).context_setting
            value = cell.settings.get(setting) if setting else None
            if isinstance(value, int):
                limits[(value, f"backends.{cell.backend}.{setting}")] = None
            limit, where = self.models[cell.model].context_limit()
            if limit is not None:
                limits[(limit, where)] = None
        return list(limits)

    def workload_inputs(self, key: str) -> list[str]:
        """What a workload file is built from: the model's tokenizer (demo models are built by
        the DAG), the dataset's files and the trace, so editing them rebuilds it. Computed once
        per key (Snakemake asks for each job that needs the file)."""
        cached = self._workload_inputs.get(key)
        if cached is None:
            cached = self._workload_inputs[key] = self._find_workload_inputs(key)
        return cached

    @functools.cached_property
    def _workload_inputs(self) -> dict[str, list[str]]:
        return {}

    def _find_workload_inputs(self, key: str) -> list[str]:
        spec, model = self.workloads[key]
        files = list(self.model_input(model))
        dataset = (spec.get("dataset") or {}).get("path")
        if dataset:
            path = Path(dataset).expanduser()
            files += sorted(str(p) for p in path.rglob("*") if p.is_file()) if path.is_dir() \
                else [str(path)]
        if spec.get("trace_path"):
            files.append(str(Path(spec["trace_path"]).expanduser()))
        return files

    def cell_identity(self, cell_id: str) -> dict[str, Any]:
        """The measure rule's `cell` param, i.e. its rerun trigger: what the cell measures
        (`identity.identity`), without operational settings, and its id."""
        cached = self._identities.get(cell_id)
        if cached is None:
            cell = self.cells[cell_id]
            cached = self._identities[cell_id] = {**identity(cell.config), "cell_id": cell.cell_id}
        return cached

    @functools.cached_property
    def _identities(self) -> dict[str, dict[str, Any]]:
        return {}

    def software(self, backend: str) -> dict[str, Any]:
        """The measure rule's `software` param: package versions of the backend's
        environment, so an upgrade reruns exactly that backend's cells."""
        from llm_energy.analysis.stale import backend_software

        return backend_software(backend, self.project_dir)

    @functools.cached_property
    def _weights_mb(self) -> dict[str, float | None]:
        return {name: _weights_mb(m) for name, m in self.models.items()}

    def mem_mb(self, model_name: str, backend: str) -> int:
        """Host memory for one measurement job, MiB: twice the weights (a copy while
        loading) plus the backend's base. Hub models, whose size is unknown before
        download, get HUB_MODEL_MEM_MB on top of the base; override per rule in the profile
        (`set-resources: {measure_<backend>: {mem_mb: N}}`)."""
        weights = self._weights_mb[model_name]
        if weights is None:
            weights = HUB_MODEL_MEM_MB / 2
        # The backend's base: the interpreter, torch and its own buffers (BackendSpec.base_mem_mb).
        total = 2 * weights + registry.get(backend).base_mem_mb
        return int(math.ceil(total / 1024) * 1024)

    def threads(self, available_cores: Callable[[], int]) -> int:
        """CPUs for one measurement job (Slurm `--cpus-per-task`): `measurement.threads`
        when set; otherwise all cores on CPU studies (the measurement is the only load) and
        a few per GPU on GPU studies (engine process, scheduler, tokenizer, sampler)."""
        measurement = self.study.measurement
        if measurement.threads:
            return measurement.threads
        if measurement.device == "cpu":
            return available_cores()
        return 4 * measurement.gpus_per_cell

    def gpus(self) -> int:
        measurement = self.study.measurement
        return measurement.gpus_per_cell if measurement.device == "cuda" else 0

    def gpu_control(self, cell_id: str) -> int:
        """The measure rule's `gpu_control` resource: 1 for a cell that changes its GPUs'
        power limit or clocks, else 0. Limit it on one machine (`--resources gpu_control=1`,
        or the number of GPUs when each cell has its own) so that two cells never change
        one GPU at once; the cells also lock their GPUs (telemetry/gpu_control.py)."""
        return 1 if self.cells[cell_id].measurement_axes else 0

    def gpu_control_resource(self) -> Callable[..., int] | int:
        """The measure rules' `gpu_control` resource: the per-cell function (`gpu_control`)
        when some cell changes GPU settings, else the constant 0 (Snakemake calls a function
        per job: on a 10,000-cell study that costs seconds of every dry run)."""
        if any(cell.measurement_axes for cell in self.cells.values()):
            return lambda wildcards: self.gpu_control(wildcards.cell_id)
        return 0

    def measure_inputs(self, cell_id: str, model: str) -> dict[str, Any]:
        """A measure job's inputs in one call (Snakemake inspects each input function per
        job): the model (demo models are built by the DAG) and the cell's workload file."""
        return {"model": self.model_input(model), "workload": self.workload_file(cell_id)}

    def runtime_min(self) -> int:
        """Slurm `-t` for a measurement job: every attempt may use the full timeout, plus
        5 minutes for start-up and writing results."""
        measurement = self.study.measurement
        return int(math.ceil(measurement.timeout_s * (1 + measurement.retries) / 60)) + 5

    def matrix_csv(self) -> str:
        return matrix_csv(list(self.cells.values()), self.pruned)

    def runs_files(self, results_dir: str | None = None) -> list[str]:
        """Every planned cell's runs.parquet, under the study's folder by default."""
        root = self.results_dir if results_dir is None else results_dir
        return [f"{root}/{c.path}/runs.parquet" for c in self.cells.values()]


def _weights_mb(model: ModelConfig) -> float | None:
    if model.demo is not None:
        demo = model.demo
        params = (2 * demo.vocab_size * demo.hidden_size
                  + demo.num_layers * (4 * demo.hidden_size ** 2
                                       + 3 * demo.hidden_size * demo.intermediate_size))
        return params * 4 / 2**20  # built in float32
    if model.gguf is not None:  # dequantized: the parameters in the spec's dtype
        width = 4 if model.gguf.dtype == "float32" else 2
        return gguf_header(model.gguf.file_path()).parameters * width / 2**20
    if model.path is not None:
        directory = Path(model.path).expanduser()
        return sum(p.stat().st_size for p in directory.iterdir()
                   if p.suffix in WEIGHT_SUFFIXES and p.is_file()) / 2**20
    return None


def default_config(project_dir: str | Path = ".") -> Path:
    """The study used without --configfile: `config/config.yaml` of the working directory
    when there is one (a deployed workflow's own study), else the workflow's default."""
    here = Path(DEFAULT_CONFIG)
    return here.resolve() if here.is_file() else (Path(project_dir) / DEFAULT_CONFIG).resolve()


def plan_from_config(config: dict[str, Any], project_dir: str = ".",
                     config_files: list[str] | None = None) -> Plan:
    """The study from Snakemake's `config` (filled by --configfile, whose paths are
    `config_files`), or the default study (`default_config`)."""
    if config:
        study = _validate_given(config, config_files)
        config_file = ";".join(str(Path(f).resolve()) for f in config_files or [])
    else:
        path = default_config(project_dir)
        # The workflow's own default study, run from another directory: its relative paths
        # (the bundled dataset) name files of the workflow, not of the working directory.
        here = Path(DEFAULT_CONFIG).resolve()
        base = None if path == here else Path(project_dir).resolve()
        study, config_file = load_study(path, base), str(path)
    cells, pruned = expand(study)
    return Plan(study, {c.cell_id: c for c in cells}, pruned, project_dir=str(project_dir),
                config_file=config_file)


def _validate_given(config: dict[str, Any], config_files: list[str] | None) -> StudyConfig:
    """Snakemake's `config`; without a --configfile and with required keys missing, the
    error says where a study comes from (`--config name=x` alone is no study)."""
    try:
        return validate_study(config)
    except ConfigError as exc:
        required = [k for k, f in StudyConfig.model_fields.items() if f.is_required()]
        if config_files or all(k in config for k in required):
            raise
        raise ConfigError(f"{exc}; give the study file with --configfile FILE (--config "
                          f"KEY=VALUE alone is not read on top of the default, "
                          f"{DEFAULT_CONFIG})") from None


def cell_to_measure(cell_id: str, config: dict[str, Any], project_dir: str = ".") -> dict[str, Any]:
    """For the measure rule's script: the cell's full configuration (`Plan.cell_params`),
    taken from the study as it is now (Snakemake's `config`), so operational settings
    (`measurement.timeout_s`, `retries`, ...) apply without being a param."""
    plan = plan_from_config(config, project_dir)
    if cell_id not in plan.cells:
        raise ConfigError(f"cell {cell_id} is not in the study any more (was the config "
                          "changed while Snakemake ran?)")
    return plan.cell_params(cell_id)


def plan_or_exit(config: dict[str, Any], project_dir: str = ".",
                 config_files: list[str] | None = None) -> Plan:
    """For the Snakefile: the validated plan, its study name checked against the study
    folders present (`layout.check_owner`). A config error is one line on stderr and exit
    status 1."""
    try:
        plan = plan_from_config(config, project_dir, config_files)
        check_owner(plan.study.name, plan.cells, plan.config_file)
        return plan
    except ConfigError as exc:
        sys.stderr.write(f"llm-energy: config error: {exc}\n")
        raise SystemExit(1) from None
