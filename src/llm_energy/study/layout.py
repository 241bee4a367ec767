"""Where a study's outputs live: one folder per study, `results/<study name>/`, and an index.

    results/
      index.json                  the studies present: name, config hash, config file, paths
      <study name>/
        study.json                which config file owns this folder, and the hash of its content
        matrix.csv  summary.parquet  summary.csv  report.html
        cells/<model>/<backend>/<cell_id>/   figures/   mlenergy/   logs/

Ownership rule (checked while the config is validated, before any job exists): a folder
belongs to the config *file* that first wrote it. That same file may be edited freely (its
cells rerun as usual). Another file may use the same study name only if it measures the same
thing (same config hash: the hash of its cell ids, each of which hashes what its cell
measures, so operational settings such as timeouts, analysis-only ones such as carbon factors,
comments and key order do not count), e.g. a copy; otherwise it is refused with one line
naming `name`, because its cells would mix with the first study's in one folder. Rename the
study or delete its folder.

Paths are relative to the working directory (`snakemake --directory`)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llm_energy.study.config import ConfigError

RESULTS_ROOT = "results"
STUDY_RECORD = "study.json"
INDEX_FILE = "index.json"
#: The study's outputs, relative to its folder (the keys are those of index.json's `paths`).
STUDY_PATHS = {
    "matrix": "matrix.csv",
    "summary": "summary.parquet",
    "summary_csv": "summary.csv",
    "report": "report.html",
    "figures": "figures",
    "cells": "cells",
    "mlenergy": "mlenergy",
    "logs": "logs",
}


def study_dir(name: str, root: str | os.PathLike = RESULTS_ROOT) -> str:
    """`results/<name>` (a string: Snakemake rules format their paths from it)."""
    return f"{Path(root).as_posix()}/{name}"


def config_hash(cell_ids: Iterable[str]) -> str:
    """What a study measures, as SHA-256 (16 hex digits) of its sorted cell ids: equal for
    two configs that plan the same cells, whatever their operational or analysis-only keys
    (which do not enter a cell id), comments or key order. Editing such a key therefore
    reruns nothing, not even the study record."""
    return hashlib.sha256("\n".join(sorted(cell_ids)).encode()).hexdigest()[:16]


def study_record(name: str, cell_ids: Iterable[str], config_file: str) -> dict[str, Any]:
    """The content of `results/<name>/study.json`. `config_file`: absolute path of the
    config file(s) (several joined with `;`), or the default study's file."""
    return {"name": name, "config_hash": config_hash(cell_ids), "config_file": config_file}


def read_record(root: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The folder's record, or None when it has none (new study) or it cannot be read."""
    try:
        record = json.loads((Path(root) / name / STUDY_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_owner(name: str, cell_ids: Iterable[str], config_file: str,
                root: str | os.PathLike = RESULTS_ROOT) -> None:
    """Refuse a config that reuses another config file's study name for other cells.

    Raises ConfigError (one line naming `name`). Reads only; writes nothing."""
    record = read_record(root, name)
    if record is None:
        return
    if record.get("config_file") == config_file or record.get("config_hash") == config_hash(cell_ids):
        return
    raise ConfigError(
        f"invalid value for 'name' (got {name!r}): {study_dir(name, root)}/ holds the study "
        f"of another config file ({record.get('config_file')}) with other cells; give this "
        "study its own name, or delete that folder to replace it")


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(record: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `results/<name>/study.json` atomically."""
    _write_json_atomic(Path(path), record)


def write_index(root: str | os.PathLike = RESULTS_ROOT) -> dict[str, Any]:
    """Rebuild `results/index.json` from the study folders present (each with a readable
    study.json), atomically. Rebuilt rather than edited, so two studies finishing at once
    cannot drop each other and a deleted folder disappears at the next write."""
    root = Path(root)
    studies = []
    for record_path in sorted(root.glob(f"*/{STUDY_RECORD}")):
        record = read_record(root, record_path.parent.name)
        if record is None or record.get("name") != record_path.parent.name:
            continue
        folder = study_dir(record["name"], root)
        studies.append({
            "name": record["name"],
            "config_hash": record.get("config_hash"),
            "config_file": record.get("config_file"),
            "path": folder,
            "paths": {key: f"{folder}/{rel}" for key, rel in STUDY_PATHS.items()},
        })
    index = {"studies": studies}
    _write_json_atomic(root / INDEX_FILE, index)
    return index


def summary_path(study: str | os.PathLike, root: str | os.PathLike = RESULTS_ROOT) -> Path:
    """A summary file from what a user names: a summary file itself (`.parquet`/`.csv`), a
    study folder (`results/<study>`), or a study name (`<study>`, looked up under `root`)."""
    path = Path(study)
    if path.is_file():
        return path
    for folder in (path, Path(root) / path):
        if (folder / STUDY_PATHS["summary"]).is_file():
            return folder / STUDY_PATHS["summary"]
    raise FileNotFoundError(f"{study}: neither a summary file, nor a study folder, nor a study "
                            f"under {root}/ with a summary")


def study_folders(root: str | os.PathLike = RESULTS_ROOT) -> list[Path]:
    """The study folders under `root` (those holding cells or a study.json)."""
    root = Path(root)
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and ((d / STUDY_RECORD).is_file() or (d / STUDY_PATHS["cells"]).is_dir())
                  ) if root.is_dir() else []
