"""`llm-energy`: validate a study, print its matrix or the config schema.

The pipeline itself runs with `snakemake` (see README.md)."""

from __future__ import annotations

import argparse
import json
import sys

from llm_energy.config import ConfigError, json_schema, load_study
from llm_energy.matrix import expand, matrix_csv


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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"llm-energy: config error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
