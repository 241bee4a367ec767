"""The pipeline's stages after measurement, as plain functions: the Snakemake scripts
(scripts/*.py, which only unpack the `snakemake` object) and the standalone command
(`llm-energy aggregate|figures|report|export RESULTS_DIR`) both call these. The measure
stage is `execution.runner.run_cell` (by hand: `llm-energy measure`).

Every function prints what it wrote (the scripts send that to the rule's log)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

CELL_GLOB = "cells/*/*/*/runs.parquet"


def aggregate(runs: list[str | Path], parquet: str | Path, csv: str | Path,
              carbon: dict[str, Any] | None = None, slo: dict[str, Any] | None = None,
              study: str | None = None) -> None:
    """Cells' runs.parquet -> the study summary (Parquet + CSV). `carbon`: the study's
    `carbon` section (None: the defaults); `slo`: its `slo` section (None: no SLO columns);
    `study`: its name (the `study` column)."""
    from llm_energy.analysis.summary import add_carbon_and_cost, write_summary
    from llm_energy.analysis.summary import aggregate as aggregate_runs

    agg = aggregate_runs([str(r) for r in runs], slo=slo or None, study=study)
    agg.summary = add_carbon_and_cost(agg.summary, carbon)
    for problem in agg.problems:
        print(f"unreadable result skipped: {problem}")
    write_summary(agg, parquet, csv)
    print(f"{len(agg.summary)} cell(s) aggregated into {parquet}")


def _reference(frame: Any, references: list[dict[str, Any]] | None,
               model_ids: dict[str, str] | None) -> Any:
    """The study's `references` read and matched to the summary (None without any)."""
    from llm_energy.analysis.reference import load_references

    reference = load_references(references or [], frame, model_ids or {})
    if reference is not None:
        print(f"{len(reference)} reference row(s), "
              f"{int(reference['matched_cells'].map(bool).sum())} matching cells of the study")
    return reference


def figures(summary: str | Path, cell_dirs: list[Path], out_dir: str | Path,
            references: list[dict[str, Any]] | None = None,
            model_ids: dict[str, str] | None = None) -> None:
    """The study figures (under `out_dir`). `references`: the study's `references` entries;
    `model_ids`: study model name -> the model id reference rows are matched by."""
    import pandas as pd

    from llm_energy.analysis.figures import draw_study
    from llm_energy.analysis.summary import read_requests

    frame = pd.read_parquet(summary)
    request_frame, problems = read_requests([d / "requests.parquet" for d in cell_dirs])
    for problem in problems:
        print(f"unreadable requests skipped: {problem}")
    for path in draw_study(frame, request_frame, out_dir,
                           _reference(frame, references, model_ids)):
        print(f"wrote {path}")


def power_figures(cell_dirs: list[Path], out_dir: str | Path, cache_dir: str | Path,
                  workers: int) -> None:
    """One power figure per cell (under `out_dir`/power; opt-in: `figures.power_per_cell`),
    drawn in `workers` processes, unchanged cells reused from `cache_dir`."""
    from llm_energy.analysis.cell_figures import draw_cells

    power = draw_cells(cell_dirs, out_dir, cache_dir=Path(cache_dir), workers=workers)
    print(f"wrote {len(power)} power figure files of {len(cell_dirs)} cells to "
          f"{Path(out_dir) / 'power'}")


def report(summary: str | Path, matrix: str | Path, figure_files: list[Path],
           provenance: list[Path], power: list[Path], out: str | Path, title: str,
           references: list[dict[str, Any]] | None = None,
           model_ids: dict[str, str] | None = None,
           cell_dirs: list[Path] | None = None, workers: int = 1) -> None:
    """The self-contained HTML report (`references`, `model_ids`: as for `figures`).
    `cell_dirs`: the cells' result folders (requests and power samples for the detail view),
    read in `workers` processes."""
    import pandas as pd

    from llm_energy.analysis.report import read_provenance, render
    from llm_energy.analysis.summary import read_problems

    frame = pd.read_parquet(summary)
    html = render(frame, pd.read_csv(matrix), [Path(f) for f in figure_files],
                  read_provenance(provenance), read_problems(summary), title,
                  power_figures={Path(p).stem: Path(p) for p in power},
                  link_base=Path(out).parent,
                  reference=_reference(frame, references, model_ids),
                  cell_dirs={Path(d).name: Path(d) for d in cell_dirs or []}, workers=workers)
    Path(out).write_text(html)
    print(f"wrote {out}")


def export(summary: str | Path, out_dir: str | Path, task: str,
           checkpoints: dict[str, str] | None = None) -> None:
    """The summary in the ML.ENERGY leaderboard app's layout (`out_dir`/index.json,
    tasks/<task>.json, models/..., and the sidecar of cells left out). Output lengths come
    from the cells' requests.parquet under the summary's folder (read as the summary reads
    them; an unreadable one leaves its cell out, reported); parameter counts from each
    model's checkpoint directory in `checkpoints` (model name -> directory)."""
    import json

    import pandas as pd

    from llm_energy.analysis.export import (
        OUTPUT_LENGTH_COLUMNS,
        SIDECAR,
        output_lengths,
        write_mlenergy,
    )
    from llm_energy.analysis.summary_io import read_requests
    from llm_energy.backends.checkpoint_facts import model_facts

    files = sorted(Path(summary).parent.glob("cells/*/*/*/requests.parquet"))
    requests, problems = read_requests(files, OUTPUT_LENGTH_COLUMNS)
    for problem in problems:
        print(f"unreadable requests skipped: {problem}")
    lengths = output_lengths(requests)
    facts = {m: model_facts(d) if Path(d).is_dir() else None
             for m, d in (checkpoints or {}).items()}
    for path in write_mlenergy(pd.read_parquet(summary), Path(out_dir), task, facts, lengths):
        print(f"wrote {path}")
    note = json.loads((Path(out_dir) / SIDECAR).read_text())["note"]
    if note:
        print(f"warning: {note}", file=sys.stderr)


# ---------------------------------------------------------------- standalone, on a study folder


def cell_dirs(results_dir: str | Path) -> list[Path]:
    return sorted(p.parent for p in Path(results_dir).glob(CELL_GLOB))


def run_on_folder(stage: str, results_dir: str | Path, out: str | Path | None = None) -> None:
    """Run one stage on a study folder (`results/<study>`) as the pipeline would, for the
    cells present. `out`: the report's file, or the folder of figures/export."""
    root = Path(results_dir)
    summary = root / "summary.parquet"
    cells = cell_dirs(root)
    if stage == "aggregate":
        aggregate([d / "runs.parquet" for d in cells], summary, root / "summary.csv",
                  study=root.name)
    elif stage == "figures":
        figures(summary, cells, Path(out or root / "figures"), root / ".figure-cache" / "power",
                os.cpu_count() or 1)
    elif stage == "report":
        report(summary, root / "matrix.csv", sorted((root / "figures").glob("*.png")),
               [d / "provenance.json" for d in cells if (d / "provenance.json").exists()],
               sorted((root / "figures" / "power").glob("*.png")),
               Path(out or root / "report.html"), f"llm-energy study: {root.name}")
    elif stage == "export":
        export(summary, Path(out or root / "mlenergy"), root.name)
    else:
        raise ValueError(f"unknown stage {stage!r}")


STAGES = ("aggregate", "figures", "report", "export")
