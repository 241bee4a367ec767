"""Write the summary in the ML.ENERGY leaderboard app's layout (analysis/export.py).
CLI: python scripts/export.py SUMMARY_PARQUET OUT_DIR TASK [--model NAME=CHECKPOINT_DIR ...]
Output lengths come from the cells' requests.parquet under the summary's folder; parameter
counts from each model's checkpoint (in Snakemake: the study's model paths)."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pandas as pd  # noqa: E402
from _common import logged  # noqa: E402

from llm_energy.analysis.export import SIDECAR, output_lengths, write_mlenergy  # noqa: E402
from llm_energy.models.facts import model_facts  # noqa: E402


def _lengths(files: list[Path]) -> dict[str, list[int]]:
    files = [f for f in files if f.exists()]
    if not files:
        return {}
    return output_lengths(pd.concat(pd.read_parquet(f, columns=["cell_id", "output_tokens",
                                                                   "success"]) for f in files))


def main(smk=None):
    if smk is not None:
        from llm_energy.study.plan import plan_from_config

        summary, task = smk.input.summary, smk.params.task
        out_dir = Path(smk.output.index).parent
        plan = plan_from_config(smk.config, ".")
        checkpoints = {m: plan.model_path(m) for m in plan.models}
        requests = [Path(r).with_name("requests.parquet")
                    for r in plan.runs_files(str(Path(summary).parent))]
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("summary")
        parser.add_argument("out_dir")
        parser.add_argument("task")
        parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR")
        args = parser.parse_args()
        summary, out_dir, task = args.summary, Path(args.out_dir), args.task
        checkpoints = dict(m.split("=", 1) for m in args.model)
        requests = sorted(Path(summary).parent.glob("cells/*/*/*/requests.parquet"))
    with logged(smk):
        facts = {m: model_facts(d) if Path(d).is_dir() else None for m, d in checkpoints.items()}
        for path in write_mlenergy(pd.read_parquet(summary), out_dir, task, facts,
                                   _lengths(requests)):
            print(f"wrote {path}")
        note = json.loads((out_dir / SIDECAR).read_text())["note"]
        if note:
            print(f"warning: {note}", file=sys.stderr)


main(globals().get("snakemake"))
