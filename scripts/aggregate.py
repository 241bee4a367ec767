"""Aggregate cells into the summary. CLI: python scripts/aggregate.py OUT_PARQUET OUT_CSV RUNS..."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged  # noqa: E402

from llm_energy.analysis.summary import add_carbon_and_cost, aggregate, write_summary  # noqa: E402


def main(smk=None):
    if smk is not None:
        runs, parquet, csv = list(smk.input.runs), smk.output.parquet, smk.output.csv
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("parquet")
        parser.add_argument("csv")
        parser.add_argument("runs", nargs="+")
        args = parser.parse_args()
        runs, parquet, csv = args.runs, args.parquet, args.csv
    with logged(smk):
        # Latency SLOs from the study's `slo` section (none from the CLI).
        agg = aggregate(runs, slo=dict(smk.params.slo) if smk and smk.params.slo else None)
        # Carbon/cost factors from the study's `carbon` section (defaults from the CLI).
        agg.summary = add_carbon_and_cost(agg.summary, dict(smk.params.carbon) if smk else None)
        for problem in agg.problems:
            print(f"unreadable result skipped: {problem}")
        write_summary(agg, parquet, csv)
        print(f"{len(agg.summary)} cell(s) aggregated into {parquet}")


main(globals().get("snakemake"))
