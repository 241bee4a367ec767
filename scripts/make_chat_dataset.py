"""Write the default study's chat dataset (config/datasets/smol-chat.jsonl) from
llm_energy.workload.chat_dataset: prompts with background lengths drawn from a Pareto
distribution, reply lengths from the ML.ENERGY leaderboard's published LMArena chat histogram.
The same seed writes the same file byte for byte; the committed file was written with the
defaults:

    PYTHONPATH=src .venv/bin/python scripts/make_chat_dataset.py
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from llm_energy.workload.chat_dataset import DEFAULT_RECORDS, DEFAULT_SEED, write_dataset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="config/datasets/smol-chat.jsonl")
parser.add_argument("--records", type=int, default=DEFAULT_RECORDS)
parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
args = parser.parse_args()
print(write_dataset(args.out, args.records, args.seed))
