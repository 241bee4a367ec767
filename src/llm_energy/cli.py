"""`llm-energy`: validate a study, print its matrix or the config schema, compare studies,
list stale cells, run one stage of the pipeline on a study folder, write envs/*.yaml.

The pipeline itself runs with `snakemake` (see README.md)."""

from __future__ import annotations

import argparse
import json
import sys

from llm_energy.backends.registry import ExtraBackendsError
from llm_energy.study.config import ConfigError, json_schema, load_study
from llm_energy.study.matrix import expand, matrix_csv


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_energy.study.layout import check_owner, study_dir

    study = load_study(args.config)
    cells, pruned = expand(study)
    # The study name must not be taken by another config file's folder (as in the pipeline).
    check_owner(study.name, [c.cell_id for c in cells], str(Path(args.config).resolve()),
                args.results)
    checked: dict[str, str] = {}
    if not args.no_preflight:
        # Dataset workloads built in memory with the model's tokenizer, as the Snakefile does.
        from llm_energy.execution.preflight import preflight
        from llm_energy.study.plan import Plan

        plan = Plan(study, {c.cell_id: c for c in cells}, pruned,
                    project_dir=str(Path(__file__).resolve().parents[2]))
        checked = preflight(plan)
    print(f"{args.config}: valid; {len(cells)} cell(s), {len(pruned)} pruned; results in "
          f"{study_dir(study.name, args.results)}/")
    for p in pruned:
        print(f"  pruned {p.model}/{p.backend} {p.settings}: {p.reason}")
    for key, how in checked.items():
        print(f"  dataset workload {key}: {how}")
    return 0


def _matrix(args: argparse.Namespace) -> int:
    cells, pruned = expand(load_study(args.config))
    sys.stdout.write(matrix_csv(cells, pruned))
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from llm_energy.analysis.compare import DEFAULT_METRICS, compare_files, format_table
    from llm_energy.study.layout import summary_path

    try:
        before, after = (summary_path(s, args.results) for s in (args.before, args.after))
    except FileNotFoundError as exc:
        print(f"llm-energy: {exc}", file=sys.stderr)
        return 1
    diff = compare_files(before, after, args.metric or DEFAULT_METRICS, args.on)
    if args.output:
        diff.to_csv(args.output, index=False)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(diff.to_csv(index=False))
    significant = int(diff["significant"].fillna(False).astype(bool).sum())
    print(format_table(diff, only_significant=True), file=sys.stderr)
    print(f"{significant} metric(s) whose 95% confidence intervals do not overlap "
          f"(marked in column `significant`)", file=sys.stderr)
    return 0


def _summary_path(given: str | None) -> str:
    """A summary file: the one given, `<dir>/summary.parquet` for a study's results folder,
    or, with none given, the only study under results/. ValueError names what is missing."""
    from pathlib import Path

    if given is None:
        found = sorted(Path("results").glob("*/summary.parquet"))
        if len(found) != 1:
            raise ValueError(f"give the study's summary (results/<study>/summary.parquet or "
                             f"results/<study>): {len(found)} found under results/")
        return str(found[0])
    path = Path(given)
    path = path / "summary.parquet" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"no summary at {path}: run the study first or give "
                         "results/<study>/summary.parquet")
    return str(path)


def _recommend(args: argparse.Namespace) -> int:
    from llm_energy.analysis.compare import _read
    from llm_energy.analysis.recommend import DEFAULT_OBJECTIVE, format_table, recommend

    try:
        path = _summary_path(args.summary)
        table = recommend(_read(path), args.objective or DEFAULT_OBJECTIVE, args.target)
    except (OSError, ValueError) as exc:
        print(f"llm-energy: {exc}", file=sys.stderr)
        return 1
    print(format_table(table))
    if args.output:
        table.to_csv(args.output, index=False)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _data_contract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_energy.results.contract import render

    path = Path(args.path)
    current = path.read_text()
    text = render(current)
    if args.check:
        if text != current:
            print(f"llm-energy: {path} is stale: run `llm-energy data-contract --write {path}`",
                  file=sys.stderr)
            return 1
        return 0
    if args.write:
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _stale(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_energy.analysis.stale import find_stale
    from llm_energy.study.layout import study_dir, study_folders

    only, folders = None, [Path(args.results)] if args.results else []
    if args.config:
        study = load_study(args.config)
        only = {c.cell_id for c in expand(study)[0]}
        folders = folders or [Path(study_dir(study.name, args.root))]
    folders = folders or study_folders(args.root)
    project_dir = args.project_dir or str(Path(__file__).resolve().parents[2])
    stale, problems = [], []
    for folder in folders:
        found, unreadable = find_stale(folder, project_dir, only)
        stale += found
        problems += unreadable
    for problem in problems:
        print(f"llm-energy: unreadable provenance skipped: {problem}", file=sys.stderr)
    for cell in stale:
        if args.paths:
            print(cell.path)
        else:
            print(f"{cell.path.parent}: {'; '.join(cell.reasons)}")
    if not args.paths:
        print(f"{len(stale)} cell(s) measured with other code or software than now",
              file=sys.stderr)
    return 0


def _stage(args: argparse.Namespace) -> int:
    from llm_energy.execution.stages import run_on_folder

    run_on_folder(args.command, args.results_dir, args.output)
    return 0


def _export_merge(args: argparse.Namespace) -> int:
    from llm_energy.analysis.export_merge import MergeConflict, write_merged

    try:
        paths = write_merged(args.studies, args.out, force=args.force)
    except (MergeConflict, FileNotFoundError) as exc:
        print(f"llm-energy: export-merge refused: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} files to {args.out} (put them in the leaderboard app's "
          "public/data/)")
    return 0


def _measure(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from llm_energy.execution.runner import run_cell
    from llm_energy.system.processes import set_parent_death_signal

    # As the pipeline's job script: the caller gone -> SIGTERM -> the runner stops the tree.
    set_parent_death_signal(signal.SIGTERM)
    cell = json.loads(Path(args.cell_json).read_text())
    status = run_cell(cell, args.model_path, Path(args.out_dir), log=sys.stdout,
                      project_dir=Path(args.project_dir or Path(__file__).resolve().parents[2]))
    print(f"cell {cell['cell_id']}: {status}")
    return 0


def _envs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_energy.execution.envs import check_envs, write_envs

    project = Path(args.project_dir or Path(__file__).resolve().parents[2])
    if args.check:
        drift = check_envs(project)
        for line in drift:
            print(f"llm-energy: {line}", file=sys.stderr)
        return 1 if drift else 0
    for path in write_envs(project):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-energy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a study config; print its cell count")
    p.add_argument("config")
    p.add_argument("--results", default="results",
                   help="the results root whose study folders the name must not clash with")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip building dataset workloads in memory with the models' tokenizers "
                   "(the check the pipeline runs before any job; cached in "
                   ".snakemake/llm-energy/preflight)")
    p.set_defaults(func=_validate)
    p = sub.add_parser("matrix", help="print the study's cells (planned and pruned) as CSV")
    p.add_argument("config")
    p.set_defaults(func=_matrix)
    p = sub.add_parser("schema", help="print the config's JSON schema")
    p.set_defaults(func=_schema)
    p = sub.add_parser("compare", help="per-cell differences between two summaries "
                       "(before/after), marking those whose 95%% CIs do not overlap")
    p.add_argument("before", help="the earlier study: its name, its folder (results/<study>) "
                   "or its summary.parquet (or .csv)")
    p.add_argument("after", help="the later study (same forms)")
    p.add_argument("--results", default="results", help="where study names are looked up")
    p.add_argument("-o", "--output", help="write the table as CSV here (default: stdout)")
    p.add_argument("--on", choices=("cell_id", "settings"), default="cell_id",
                   help="match cells by cell_id (default) or by model, backend and settings")
    p.add_argument("--metric", action="append",
                   help="a summary metric to compare (repeatable; default: the headline metrics)")
    p.set_defaults(func=_compare)
    p = sub.add_parser("recommend", help="per model and workload, the configuration with the "
                       "lowest energy that meets the study's latency SLO, against the fastest")
    p.add_argument("summary", nargs="?", default=None,
                   help="summary.parquet (or .csv) or a study's results folder; default: the "
                   "only study under results/")
    p.add_argument("--objective", help="summary column of the energy to minimise (default: "
                   "energy per output token; or energy_per_slo_request_j, ...: see README)")
    p.add_argument("--target", type=float, help="SLO attainment a cell needs, 0-1 (default: "
                   "the study's slo.target_attainment; no SLO when the study has none)")
    p.add_argument("-o", "--output", help="also write the table as CSV here")
    p.set_defaults(func=_recommend)
    p = sub.add_parser("data-contract", help="docs/data-contract.md with its column tables "
                       "regenerated from the column registry (the prose is kept)")
    p.add_argument("path", nargs="?", default="docs/data-contract.md",
                   help="the document (template and target; default: docs/data-contract.md)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the file in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    p.set_defaults(func=_data_contract)
    p = sub.add_parser("stale", help="list cells measured with other code or package versions "
                       "than the current ones (Snakemake does not track package code)")
    p.add_argument("--results", help="one study folder (default: the --config study's folder, "
                   "else every study under --root)")
    p.add_argument("--root", default="results", help="the results root (default: results)")
    p.add_argument("--config", help="only the cells of this study")
    p.add_argument("--paths", action="store_true",
                   help="print only their runs.parquet paths, for `snakemake --forcerun $(...)`")
    p.add_argument("--project-dir", help="where .venvs/<backend> live (default: this checkout)")
    p.set_defaults(func=_stale)
    for stage, what in (("aggregate", "the summary from the cells present"),
                        ("figures", "the figures"), ("report", "the HTML report"),
                        ("export", "the ML.ENERGY export")):
        p = sub.add_parser(stage, help=f"write {what} of a study folder, as the pipeline "
                           "does (by hand, without snakemake)")
        p.add_argument("results_dir", help="the study folder, results/<study>")
        p.add_argument("-o", "--output", help="where to write (default: as the pipeline)")
        p.set_defaults(func=_stage)
    p = sub.add_parser("export-merge", help="merge several studies' ML.ENERGY exports "
                       "into one data/ folder for the leaderboard app (refuses a configuration "
                       "found in two studies)")
    p.add_argument("studies", nargs="+", metavar="STUDY_DIR",
                   help="a study folder (results/<study>) or its mlenergy/ export folder")
    p.add_argument("--out", required=True, help="the data/ folder to write")
    p.add_argument("--force", action="store_true", help="replace an export already in --out")
    p.set_defaults(func=_export_merge)
    p = sub.add_parser("measure", help="measure one cell as the pipeline's measure job does "
                       "(by hand, without snakemake)")
    p.add_argument("cell_json", help="the cell's resolved configuration (the rule's `cell` param)")
    p.add_argument("model_path")
    p.add_argument("out_dir", help="results/<study>/cells/<model>/<backend>/<cell_id>")
    p.add_argument("--project-dir", help="where .venvs/<backend> live (default: this checkout)")
    p.set_defaults(func=_measure)
    p = sub.add_parser("envs", help="write envs/*.yaml from requirements/*.txt "
                       "(--check: exit 1 when they differ)")
    p.add_argument("--check", action="store_true")
    p.add_argument("--project-dir", help="the checkout (default: this one)")
    p.set_defaults(func=_envs)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ExtraBackendsError) as exc:  # a bad study or backend registration
        print(f"llm-energy: config error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
