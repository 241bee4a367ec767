"""Write the HTML report. CLI: python scripts/report.py RESULTS_DIR [OUT_HTML]"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pandas as pd  # noqa: E402
from _common import logged  # noqa: E402

from llm_energy.analysis.report import read_provenance, render  # noqa: E402
from llm_energy.analysis.summary import read_problems  # noqa: E402


def main(smk=None):
    if smk is not None:
        summary, matrix = smk.input.summary, smk.input.matrix
        figures, provenance = list(smk.input.figures), list(smk.input.provenance)
        power = sorted(Path(smk.input.power).glob("*.png"))
        out, title = smk.output[0], smk.params.title
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("results_dir")
        parser.add_argument("out", nargs="?")
        args = parser.parse_args()
        root = Path(args.results_dir)
        summary, matrix = root / "summary.parquet", root / "matrix.csv"
        figures = sorted((root / "figures").glob("*.png"))
        power = sorted((root / "figures" / "power").glob("*.png"))
        provenance = sorted((root / "cells").glob("*/*/*/provenance.json"))
        out, title = args.out or root / "report.html", "llm-energy study"
    with logged(smk):
        frame = pd.read_parquet(summary)
        html = render(frame, pd.read_csv(matrix), [Path(f) for f in figures],
                      read_provenance(provenance), read_problems(summary), title,
                      power_figures={Path(p).stem: Path(p) for p in power},
                      link_base=Path(out).parent)
        Path(out).write_text(html)
        print(f"wrote {out}")


main(globals().get("snakemake"))
