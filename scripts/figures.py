"""Draw the study figures and one power figure per cell.
CLI: python scripts/figures.py RESULTS_DIR [OUT_DIR]   (OUT_DIR defaults to RESULTS_DIR/figures)"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pandas as pd  # noqa: E402
from _common import logged  # noqa: E402

from llm_energy.analysis.cell_figures import draw_cells  # noqa: E402
from llm_energy.analysis.figures import draw_study  # noqa: E402
from llm_energy.analysis.summary import read_requests  # noqa: E402


def main(smk=None):
    if smk is not None:
        summary, out_dir = smk.input.summary, Path(smk.params.out_dir)
        requests = list(smk.input.requests)
        cell_dirs = [Path(r).parent for r in smk.input.runs]
        cache_dir, workers = Path(smk.params.cache_dir), smk.threads
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("results_dir")
        parser.add_argument("out_dir", nargs="?")
        args = parser.parse_args()
        root = Path(args.results_dir)
        summary, out_dir = root / "summary.parquet", Path(args.out_dir or root / "figures")
        cell_dirs = sorted(p.parent for p in (root / "cells").glob("*/*/*/runs.parquet"))
        requests = [d / "requests.parquet" for d in cell_dirs]
        cache_dir, workers = root / ".figure-cache" / "power", os.cpu_count() or 1
    with logged(smk):
        frame = pd.read_parquet(summary)
        request_frame, problems = read_requests(requests)
        for problem in problems:
            print(f"unreadable requests skipped: {problem}")
        for path in draw_study(frame, request_frame, out_dir):
            print(f"wrote {path}")
        power = draw_cells(cell_dirs, out_dir, cache_dir=cache_dir, workers=workers)
        print(f"wrote {len(power)} power figure files of {len(cell_dirs)} cells to "
              f"{Path(out_dir) / 'power'}")


# Guarded: figure worker processes (spawn) import this module again as __mp_main__.
if __name__ == "__main__":
    main(globals().get("snakemake"))
