"""The backend registry: one `BackendSpec` per backend, declared next to its code
(`backends/<name>_spec.py`). Every other module asks the registry instead of naming a backend:
the study config's `backends:` section, matrix pruning, the protocol's batch limit, stale
detection, figures, export, environments and the Snakemake measure rules.

Adding a backend = its implementation module, a spec module with `SPEC = BackendSpec(...)`
listed in `BUILTIN_SPEC_MODULES` (or given in `LLM_ENERGY_EXTRA_BACKENDS`), and its
environment files (requirements/<x>.txt, envs/<x>.yaml, envs/containers/<x>.Dockerfile).

Spec modules are light (pydantic only): the study side imports them without torch or any
engine. Implementations are imported lazily (`BackendSpec.backend_class`)."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_energy.backends.settings import BackendSettings

if TYPE_CHECKING:
    from llm_energy.backends.base import Backend

#: The built-in backends' spec modules, each defining `SPEC`.
BUILTIN_SPEC_MODULES = (
    "llm_energy.backends.transformers_spec",
    "llm_energy.backends.vllm_spec",
    "llm_energy.backends.tensorrt_llm_spec",
    "llm_energy.backends.openai_server_spec",
)

EXTRA_BACKENDS_ENV = "LLM_ENERGY_EXTRA_BACKENDS"

#: The pipeline's own local environment (`make venv`); backends that run there need no other.
PIPELINE_VENV = ".venv"

#: Memory a measuring job asks a scheduler for beyond the weights when a spec gives none, MiB.
DEFAULT_BASE_MEM_MB = 4096

#: Setting that selects how a backend with several modes runs (vLLM: offline or server).
MODE_SETTING = "mode"

Prune = Callable[[Mapping[str, Any], str], "str | None"]


#: The pipeline's own environment (.venv from requirements/main.txt), where backends that need
#: no engine of their own run: one declaration for every spec that uses it.
PIPELINE_ENVIRONMENT: dict[str, str] = {
    "venv": ".venv",
    "make_target": "venv",
    "requirements": "requirements/main.txt",
    "conda_env": "envs/pipeline.yaml",
    "container": "envs/containers/pipeline.Dockerfile",
    "container_image": "resources/containers/pipeline.sif",
}


@dataclass(frozen=True)
class BackendSpec:
    """Everything the pipeline needs to know about one backend.

    name: the key under `backends:` in a study file, the cells' `backend` column, the
        results folder name and the environment variable suffix of its python override.
    config: its pydantic settings class; list fields are sweep axes.
    implementation: "module:Class" of its `Backend`, imported only inside its environment.
    modes: other implementations chosen by the cell's `mode` setting ({"server": "m:C"}).
    server_modes: values of `mode` whose requests go through the HTTP load generator.
    server: every cell goes through the load generator (an external server).
    batch_setting: the setting that limits how many requests run at once (None: only the
        load generator's concurrency limits it).
    context_setting: the setting that limits prompt + output tokens, if any.
    quantization_setting / quantization_names: the setting naming a quantisation and a
        function giving the names the engine knows (checked before any job).
    parallel_setting: the tensor-parallel size setting (must fit `gpus_per_cell`).
    token_budget_setting: the setting limiting tokens per engine step, if any.
    devices: `measurement.device` values it runs on; other devices prune its cells, with
        `devices_reason` as the reason when given.
    prune: further reasons a combination cannot run: (settings, device) -> reason or None.
    packages: distributions whose versions can change its measurements (reruns its cells).
    import_name: the module whose presence makes an interpreter fit to run it.
    self_threaded: pins its own compute threads (scheduler thread variables are removed).
    venv / make_target / requirements / conda_env / container / container_image: its
        environments: local venv folder and the make target that builds it, pip lock file,
        conda env file (Snakemake `conda:`), container image definition (a Dockerfile), and
        the image Snakemake's `container:` runs (a local Apptainer image built from it, see
        docs/environments.md). Paths are relative to the project directory.
    install_hint: what to do when its environment is missing.
    base_mem_mb: host memory for a measuring job beyond twice the weights, MiB.
    release_1_settings: its settings in release 1 of the cell hash (`study.identity`): always
        hashed; settings added later are left out at their default. Frozen: never add to it
        (a backend registered after release 1 has none).
    """

    name: str
    config: type[BackendSettings]
    implementation: str
    install_hint: str
    import_name: str
    modes: Mapping[str, str] = field(default_factory=dict)
    server_modes: tuple[str, ...] = ()
    server: bool = False
    batch_setting: str | None = None
    context_setting: str | None = None
    quantization_setting: str | None = None
    quantization_names: Callable[[], Collection[str]] | None = None
    parallel_setting: str | None = None
    token_budget_setting: str | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    devices_reason: str | None = None
    prune: Prune | None = None
    packages: tuple[str, ...] = ()
    self_threaded: bool = False
    venv: str = PIPELINE_VENV
    make_target: str = "venv"
    requirements: str | None = "requirements/main.txt"
    conda_env: str | None = None
    container: str | None = None
    container_image: str | None = None
    base_mem_mb: int = DEFAULT_BASE_MEM_MB
    release_1_settings: tuple[str, ...] = ()

    @property
    def field_name(self) -> str:
        """The Python attribute of `StudyConfig.backends` holding its section."""
        return self.name.replace("-", "_")

    @property
    def python_env_var(self) -> str:
        """Environment variable that points at the interpreter of its environment."""
        return f"LLM_ENERGY_PYTHON_{self.name.upper().replace('-', '_')}"

    @property
    def rule_name(self) -> str:
        """Name of its Snakemake measure rule."""
        return f"measure_{self.field_name}"

    def setting_names(self) -> list[str]:
        return [n for n in self.config.model_fields if n != "enabled"]

    def is_server(self, settings: Mapping[str, Any] | None = None) -> bool:
        """Whether a cell's requests go through the HTTP load generator."""
        return self.server or (settings or {}).get(MODE_SETTING) in self.server_modes

    def batch_limit(self, settings: Mapping[str, Any]) -> int | None:
        """The cell's batch limit (its `batch_setting`), or None: no such setting, or a
        missing value (None, NaN or pd.NA in a summary row)."""
        value = settings.get(self.batch_setting) if self.batch_setting else None
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return int(number) if number == number and number > 0 else None

    def prune_reason(self, settings: Mapping[str, Any], device: str) -> str | None:
        """Why this backend cannot run a cell's settings on `device`, or None."""
        if device not in self.devices:
            return self.devices_reason or (f"{self.name} runs on {' or '.join(self.devices)} "
                                           f"only (measurement.device: {device})")
        return self.prune(settings, device) if self.prune else None

    def cell_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """A cell's settings with every unset one at the config class's default."""
        return {**self.config.cell_defaults(), **settings}

    def backend_class(self, settings: Mapping[str, Any] | None = None) -> type[Backend]:
        """The implementation for a cell (its `mode` may pick another one)."""
        target = self.modes.get((settings or {}).get(MODE_SETTING), self.implementation)
        module_name, _, class_name = target.partition(":")
        return getattr(importlib.import_module(module_name), class_name)

    def requirements_path(self, project_dir: str | os.PathLike[str]) -> Path | None:
        return Path(project_dir) / self.requirements if self.requirements else None


class ExtraBackendsError(ValueError):
    """`LLM_ENERGY_EXTRA_BACKENDS` names no usable backend; `str()` is one line naming the
    variable, the item and the problem (shown as a config error, never as a traceback)."""


def _load_spec(target: str) -> BackendSpec:
    module_name, _, attr = target.partition(":")
    spec = getattr(importlib.import_module(module_name), attr or "SPEC")
    if not isinstance(spec, BackendSpec):
        raise TypeError(f"{target} is a {type(spec).__name__}, not a BackendSpec")
    return spec


def _load_extra(item: str, target: str) -> BackendSpec:
    """An extra backend's spec, or `ExtraBackendsError` saying why there is none."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure of a foreign module: one line
        problem = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ExtraBackendsError(f"{EXTRA_BACKENDS_ENV}: {item!r}: module {module_name!r} "
                                 f"does not import ({problem})") from None
    spec = getattr(module, attr or "SPEC", None)
    if not isinstance(spec, BackendSpec):
        found = ("has none" if spec is None else f"is the class {spec.__name__}"
                 if isinstance(spec, type) else f"is a {type(spec).__name__}")
        raise ExtraBackendsError(f"{EXTRA_BACKENDS_ENV}: {item!r}: module {module_name!r} "
                                 f"must define {attr or 'SPEC'} = BackendSpec(...); it {found}")
    return spec


@functools.lru_cache(maxsize=8)
def _specs(extra: str) -> dict[str, BackendSpec]:
    specs = {s.name: s for s in map(_load_spec, BUILTIN_SPEC_MODULES)}
    for item in filter(None, (p.strip() for p in extra.split(","))):
        name, eq, target = item.rpartition("=") if "=" in item else ("", "", item)
        if eq:  # name=module:Class: another implementation of a registered backend
            name = name.strip()
            if name not in specs or ":" not in target:
                raise ExtraBackendsError(
                    f"{EXTRA_BACKENDS_ENV}: {item!r}: expected name=module:Class with a "
                    f"registered name ({', '.join(specs)})")
            specs[name] = replace(specs[name], implementation=target.strip(), modes={})
        else:  # module[:ATTR]: a whole backend, declared outside the package
            spec = _load_extra(item, target.strip())
            specs[spec.name] = spec
    return specs


def builtin_specs() -> dict[str, BackendSpec]:
    """The built-in backends by name, whatever `LLM_ENERGY_EXTRA_BACKENDS` says."""
    return _specs("")


def extra_backends() -> str:
    """`LLM_ENERGY_EXTRA_BACKENDS`: comma-separated `module[:ATTR]` (a module outside the
    package defining a `BackendSpec`, `SPEC` by default) or `name=module:Class` (another
    implementation of a registered backend, for all its modes). Read by the pipeline and by
    the measuring process, which inherits the environment and PYTHONPATH."""
    return os.environ.get(EXTRA_BACKENDS_ENV, "")


def specs() -> dict[str, BackendSpec]:
    """Every registered backend by name, built-ins first."""
    return _specs(extra_backends())


def names() -> list[str]:
    return list(specs())


def get(name: str) -> BackendSpec:
    """The spec of backend `name`; KeyError naming the known ones."""
    registered = specs()
    if name not in registered:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(registered)}")
    return registered[name]


def find(name: Any) -> BackendSpec | None:
    """The spec of `name`, or None (e.g. an old result's backend that is no longer registered)."""
    return specs().get(name) if isinstance(name, str) else None


def batch_limit_of(row: Mapping[str, Any]) -> int | None:
    """The batch limit of a result row (a cell's `backend` and settings, e.g. a summary
    row); None for a backend without a batch setting or no longer registered."""
    spec = find(row.get("backend"))
    return spec.batch_limit(row) if spec is not None else None


def setting_of(row: Mapping[str, Any], role: str) -> Any:
    """The value of the setting that plays `role` ("batch_setting", "parallel_setting",
    "token_budget_setting", ...) for a result row's backend; None where it has none."""
    spec = find(row.get("backend"))
    name = getattr(spec, role) if spec is not None else None
    return row.get(name) if name else None


def batch_settings() -> tuple[str, ...]:
    """Every backend's batch-limit setting name."""
    return tuple(dict.fromkeys(s.batch_setting for s in specs().values() if s.batch_setting))


def parallel_settings() -> tuple[str, ...]:
    """Every backend's tensor-parallel setting name."""
    return tuple(dict.fromkeys(s.parallel_setting for s in specs().values() if s.parallel_setting))


def setting_names() -> set[str]:
    """Every setting of every registered backend."""
    return {n for s in specs().values() for n in s.setting_names()}
