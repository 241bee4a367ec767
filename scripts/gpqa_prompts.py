"""Write GPQA prompts in ML.ENERGY's template (llm_energy.workload.gpqa) from a downloaded
gpqa_diamond.csv, for config/examples/gpqa.yaml:

    .venv/bin/python scripts/gpqa_prompts.py data/gpqa/gpqa_diamond.csv data/gpqa/prompts.jsonl
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from llm_energy.workload.gpqa import write_gpqa_prompts

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("csv")
parser.add_argument("out")
parser.add_argument("--seed", type=int, default=0, help="seeds the order of the choices")
args = parser.parse_args()
print(f"{write_gpqa_prompts(args.csv, args.out, args.seed)} prompts written to {args.out}")
