"""Write the summary in the ML.ENERGY leaderboard's format.
CLI: python scripts/export.py SUMMARY_PARQUET OUT_DIR TASK"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pandas as pd  # noqa: E402
from _common import logged  # noqa: E402

from llm_energy.analysis.export import write_mlenergy  # noqa: E402


def main(smk=None):
    if smk is not None:
        summary, out_dir, task = smk.input.summary, Path(smk.output.index).parent, smk.params.task
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("summary")
        parser.add_argument("out_dir")
        parser.add_argument("task")
        args = parser.parse_args()
        summary, out_dir, task = args.summary, Path(args.out_dir), args.task
    with logged(smk):
        for path in write_mlenergy(pd.read_parquet(summary), out_dir, task):
            print(f"wrote {path}")


main(globals().get("snakemake"))
