"""`llm-energy`: validate a study, print its matrix or the config schema, list stale cells.

The pipeline itself runs with `snakemake` (see README.md)."""

from __future__ import annotations

import argparse
import json
import sys

from llm_energy.study.config import ConfigError, json_schema, load_study
from llm_energy.study.matrix import expand, matrix_csv


def _validate(args: argparse.Namespace) -> int:
    study = load_study(args.config)
    cells, pruned = expand(study)
    print(f"{args.config}: valid; {len(cells)} cell(s), {len(pruned)} pruned")
    for p in pruned:
        print(f"  pruned {p.model}/{p.backend} {p.settings}: {p.reason}")
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

    diff = compare_files(args.before, args.after, args.metric or DEFAULT_METRICS, args.on)
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


def _recommend(args: argparse.Namespace) -> int:
    from llm_energy.analysis.compare import _read
    from llm_energy.analysis.recommend import DEFAULT_OBJECTIVE, format_table, recommend

    try:
        table = recommend(_read(args.summary), args.objective or DEFAULT_OBJECTIVE, args.target)
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

    only = None
    if args.config:
        only = {c.cell_id for c in expand(load_study(args.config))[0]}
    project_dir = args.project_dir or str(Path(__file__).resolve().parents[2])
    stale, problems = find_stale(args.results, project_dir, only)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-energy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a study config; print its cell count")
    p.add_argument("config")
    p.set_defaults(func=_validate)
    p = sub.add_parser("matrix", help="print the study's cells (planned and pruned) as CSV")
    p.add_argument("config")
    p.set_defaults(func=_matrix)
    p = sub.add_parser("schema", help="print the config's JSON schema")
    p.set_defaults(func=_schema)
    p = sub.add_parser("compare", help="per-cell differences between two summaries "
                       "(before/after), marking those whose 95%% CIs do not overlap")
    p.add_argument("before", help="summary.parquet (or .csv) of the earlier study")
    p.add_argument("after", help="summary.parquet (or .csv) of the later study")
    p.add_argument("-o", "--output", help="write the table as CSV here (default: stdout)")
    p.add_argument("--on", choices=("cell_id", "settings"), default="cell_id",
                   help="match cells by cell_id (default) or by model, backend and settings")
    p.add_argument("--metric", action="append",
                   help="a summary metric to compare (repeatable; default: the headline metrics)")
    p.set_defaults(func=_compare)
    p = sub.add_parser("recommend", help="per model and workload, the configuration with the "
                       "lowest energy that meets the study's latency SLO, against the fastest")
    p.add_argument("summary", nargs="?", default="results/summary.parquet",
                   help="summary.parquet (or .csv); default: results/summary.parquet")
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
    p.add_argument("--results", default="results", help="the results folder (default: results)")
    p.add_argument("--config", help="only the cells of this study")
    p.add_argument("--paths", action="store_true",
                   help="print only their runs.parquet paths, for `snakemake --forcerun $(...)`")
    p.add_argument("--project-dir", help="where .venvs/<backend> live (default: this checkout)")
    p.set_defaults(func=_stale)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"llm-energy: config error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
