"""Several studies' ML.ENERGY exports (`results/<study>/mlenergy/`, `analysis.export`) merged
into one `data/` folder for the leaderboard app (`llm-energy export-merge`):

- `index.json`: the latest `last_updated`, the union of the tasks, of each architecture's
  tasks and of the models (a model whose parameter counts or architecture differ between
  studies is refused: the app keeps one `ModelInfo` per model id);
- `tasks/<task>.json`: the configurations of every study with that task, concatenated;
- `models/<model>__<task>.json`: a model's configurations concatenated; its model-level
  output-length histogram summed where the studies' bins agree, else rebuilt over 50 common
  bins from each bin's count at the bin's centre (said in the sidecar);
- `llm_energy.json`: the studies merged, each one's configurations left out (with the study).

The same configuration from two studies (same task, model, GPU, GPU count, precision,
parallelism, batch limit and, for this project's exports, backend and settings) is refused
with one line naming both folders: the app would show two rows it cannot tell apart."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_energy.analysis.export import (
    HISTOGRAM_BINS,
    SIDECAR,
    _dump,
    model_file,
    task_file,
)

#: Configuration fields that say which configuration it is (the others are measurements).
IDENTITY = ("model_id", "gpu_model", "num_gpus", "weight_precision", "max_num_seqs",
            "tensor_parallel", "expert_parallel", "data_parallel")
#: `ModelInfo` fields that must agree between studies.
MODEL_FACTS = ("total_params_billions", "activated_params_billions", "architecture")


class MergeConflict(ValueError):
    """Two studies hold what the app can show only once; `str()` is one line."""


def export_folder(study: str | Path) -> Path:
    """A study's export folder: `study` itself when it holds index.json, else its `mlenergy/`."""
    folder = Path(study)
    folder = folder if (folder / "index.json").is_file() else folder / "mlenergy"
    if not (folder / "index.json").is_file():
        raise FileNotFoundError(f"{study}: no ML.ENERGY export (index.json) here or in "
                                "mlenergy/; run the pipeline or `llm-energy export` first")
    return folder


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def configuration_key(task: str, config: dict[str, Any]) -> str:
    ours = config.get("llm_energy") or {}
    key = {"task": task, **{f: config.get(f) for f in IDENTITY},
           "backend": ours.get("backend"), "settings": ours.get("settings")}
    return json.dumps(key, sort_keys=True, default=str)


def _rebinned(histograms: Sequence[dict[str, list]]) -> tuple[dict[str, list], bool]:
    """One histogram of several: summed where the bins agree, else `HISTOGRAM_BINS` common
    bins, each source bin's count put where its centre falls. (histogram, rebinned?)"""
    if all(h["bins"] == histograms[0]["bins"] for h in histograms):
        counts = np.sum([h["counts"] for h in histograms], axis=0)
        return {"bins": histograms[0]["bins"], "counts": [int(c) for c in counts]}, False
    low = min(h["bins"][0] for h in histograms)
    high = max(h["bins"][-1] for h in histograms)
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    counts = np.zeros(HISTOGRAM_BINS, dtype=int)
    for h in histograms:
        centres = (np.asarray(h["bins"][:-1]) + np.asarray(h["bins"][1:])) / 2
        where = np.clip(np.searchsorted(edges, centres, side="right") - 1, 0, HISTOGRAM_BINS - 1)
        np.add.at(counts, where, np.asarray(h["counts"], dtype=int))
    return {"bins": [float(e) for e in edges], "counts": [int(c) for c in counts]}, True


def merge_exports(studies: Sequence[str | Path]) -> dict[str, Any]:
    """Relative path -> JSON document of the merged `data/` folder (see the module doc)."""
    folders = [export_folder(s) for s in studies]
    if len({f.resolve() for f in folders}) < len(folders):
        raise MergeConflict("the same export folder is given twice")
    index: dict[str, Any] = {"last_updated": "", "tasks": [],
                             "architectures": {"llm": [], "mllm": [], "diffusion": []},
                             "models": {}}
    model_from: dict[str, Path] = {}
    tasks: dict[str, dict[str, Any]] = {}
    seen: dict[str, Path] = {}
    named: set[str] = set()
    details: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    sidecar: dict[str, Any] = {"generator": "llm-energy", "merged_from": [], "exported": 0,
                               "notes": [], "left_out": []}
    for folder in folders:
        doc = _read(folder / "index.json")
        index["last_updated"] = max(index["last_updated"], doc.get("last_updated", ""))
        for model, info in doc.get("models", {}).items():
            first = index["models"].setdefault(model, info)
            model_from.setdefault(model, folder)
            differ = [f for f in MODEL_FACTS if first.get(f) != info.get(f)]
            if differ:
                raise MergeConflict(
                    f"model '{model}' has other {', '.join(differ)} in {folder} than in "
                    f"{model_from[model]}: one model id, one set of facts")
        for arch, names in doc.get("architectures", {}).items():
            index["architectures"].setdefault(arch, [])
            index["architectures"][arch] += [t for t in names
                                             if t not in index["architectures"][arch]]
        for task in doc.get("tasks", []):
            if task not in index["tasks"]:
                index["tasks"].append(task)
            task_doc = _read(folder / task_file(task))
            merged = tasks.setdefault(task, {**task_doc, "configurations": []})
            for config in task_doc["configurations"]:
                key = configuration_key(task, config)
                if key in seen:
                    raise MergeConflict(
                        f"task '{task}': model '{config['model_id']}' on "
                        f"'{config['gpu_model']}' with the same configuration "
                        f"(batch {config.get('max_num_seqs')}, "
                        f"{(config.get('llm_energy') or {}).get('backend', '')} "
                        f"{(config.get('llm_energy') or {}).get('settings', '')}) is in both "
                        f"{seen[key]} and {folder}; merge one of them")
                seen[key] = folder
                merged["configurations"].append(config)
            if task_doc["configurations"] and task not in named:
                # The name of a study with configurations (an empty one says it is empty).
                merged["task_display_name"] = task_doc["task_display_name"]
                named.add(task)
            for model in sorted({c["model_id"] for c in task_doc["configurations"]}):
                path = model_file(model, task)
                details.setdefault(path, []).append((folder, _read(folder / path)))
        side = folder / SIDECAR
        if side.is_file():
            own = _read(side)
            sidecar["left_out"] += [{**x, "study": str(folder)} for x in own.get("left_out", [])]
        sidecar["merged_from"].append(str(folder))
    docs: dict[str, Any] = {"index.json": index}
    for task, doc in tasks.items():
        docs[task_file(task)] = doc
        sidecar["exported"] += len(doc["configurations"])
    for path, parts in details.items():
        detail = dict(parts[0][1])
        detail["configurations"] = [c for _, d in parts for c in d["configurations"]]
        if len(parts) > 1:
            detail["output_length_distribution"], rebinned = _rebinned(
                [d["output_length_distribution"] for _, d in parts])
            if rebinned:
                sidecar["notes"].append(
                    f"{path}: the model-level output-length histogram is rebuilt from "
                    f"{len(parts)} studies' histograms with other bins (counts at bin centres); "
                    "each configuration keeps its own")
        docs[path] = detail
    docs[SIDECAR] = sidecar
    return docs


def write_merged(studies: Sequence[str | Path], out_dir: str | Path,
                 force: bool = False) -> list[Path]:
    """Write `merge_exports` under `out_dir` (nothing is written on a conflict). A folder
    that already holds an index.json is replaced only with `force`."""
    docs = merge_exports(studies)
    out = Path(out_dir)
    if out.resolve() in {export_folder(s).resolve() for s in studies}:
        raise MergeConflict(f"{out} is one of the studies' exports; give another folder")
    if (out / "index.json").exists():
        if not force:
            raise MergeConflict(f"{out} already holds an export (index.json); give another "
                                "folder or --force to replace it")
        for name in ("tasks", "models"):
            shutil.rmtree(out / name, ignore_errors=True)
    paths = []
    for relative, doc in docs.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_dump(doc))
        paths.append(path)
    return paths
