"""What the Snakefile needs from the package: the validated study and its cells.

Kept here (not in the .smk files) so it is tested like the rest of the logic."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_energy.config import ConfigError, StudyConfig, load_study, validate_study
from llm_energy.matrix import Cell, PrunedCell, expand, matrix_csv

DEFAULT_CONFIG = "config/config.yaml"
MODELS_DIR = "resources/models"


@dataclass
class Plan:
    study: StudyConfig
    cells: dict[str, Cell]
    pruned: list[PrunedCell]

    def model_path(self, model_name: str) -> str:
        model = next(m for m in self.study.models if m.name == model_name)
        if model.demo is not None:
            return f"{MODELS_DIR}/{model.name}"
        return model.path if model.path is not None else str(model.hub_id)

    def model_input(self, model_name: str) -> list[str]:
        """The files a cell's measurement depends on (demo models are built by the DAG)."""
        model = next(m for m in self.study.models if m.name == model_name)
        if model.demo is not None:
            return [f"{MODELS_DIR}/{model.name}/config.json"]
        if model.path is not None:
            return [str(Path(model.path) / "config.json")]
        return []

    def cell_params(self, cell_id: str) -> dict[str, Any]:
        cell = self.cells[cell_id]
        return {**cell.config, "cell_id": cell.cell_id}

    def matrix_csv(self) -> str:
        return matrix_csv(list(self.cells.values()), self.pruned)

    def runs_files(self, results_dir: str = "results") -> list[str]:
        return [f"{results_dir}/{c.path}/runs.parquet" for c in self.cells.values()]


def plan_from_config(config: dict[str, Any]) -> Plan:
    """The study from Snakemake's `config` (filled by --configfile), or the default study."""
    study = validate_study(config) if config else load_study(DEFAULT_CONFIG)
    cells, pruned = expand(study)
    return Plan(study, {c.cell_id: c for c in cells}, pruned)


def plan_or_exit(config: dict[str, Any]) -> Plan:
    """For the Snakefile: a config error is one line on stderr and exit status 1."""
    try:
        return plan_from_config(config)
    except ConfigError as exc:
        sys.stderr.write(f"llm-energy: config error: {exc}\n")
        raise SystemExit(1) from None
