"""Write results/matrix.csv. CLI: python scripts/write_matrix.py CONFIG OUT_CSV"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401

from llm_energy.study.plan import plan_from_config  # noqa: E402


def main(smk=None):
    if smk is not None:
        text, out = smk.params.table, smk.output[0]
    else:
        import yaml

        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("config")
        parser.add_argument("out")
        args = parser.parse_args()
        text, out = plan_from_config(yaml.safe_load(Path(args.config).read_text())).matrix_csv(), args.out
    Path(out).write_text(text)


main(globals().get("snakemake"))
