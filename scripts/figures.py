"""Draw the figures. CLI: python scripts/figures.py SUMMARY_PARQUET OUT_DIR"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged  # noqa: E402

import pandas as pd  # noqa: E402

from llm_energy.figures import FIGURES  # noqa: E402


def main(smk=None):
    if smk is not None:
        summary, out_dir = smk.input.summary, Path(smk.output[0]).parent
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("summary")
        parser.add_argument("out_dir")
        args = parser.parse_args()
        summary, out_dir = args.summary, Path(args.out_dir)
    with logged(smk):
        frame = pd.read_parquet(summary)
        for name, draw in FIGURES.items():
            for path in draw(frame, out_dir / name):
                print(f"wrote {path}")


main(globals().get("snakemake"))
