"""Rule `workload`: build one workload file (llm_energy.workload.build); bad input (a
dataset prompt that cannot fit a cell's context, an empty dataset, ...) fails the rule with
one line, before any measure job. The plan-time preflight (llm_energy.execution.preflight)
runs the same checks before any job wherever the tokenizer can be had without one; this
catches the rest (hub models, `trust_remote_code`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.study.plan import plan_from_config
from llm_energy.workload.build import build_for_model

PROJECT = str(Path(__file__).resolve().parent.parent)

with logged(snakemake):
    params = dict(snakemake.params.workload)
    out = Path(snakemake.output[0])
    # The study as it is now (not a param: see Plan.workload_context_limits).
    limits = plan_from_config(dict(snakemake.config), PROJECT).workload_context_limits(
        snakemake.wildcards.key)
    try:
        built = build_for_model(params["spec"], params["model_path"], out,
                                trust_remote_code=params.get("trust_remote_code", False),
                                context_limits=limits)
    except ValueError as exc:  # DatasetError included: one line, no traceback
        message = f"llm-energy: workload error: {exc}"
        print(message)
        sys.__stderr__.write(message + "\n")
        raise SystemExit(1) from None
    print(f"workload {out}: {len(built.prompts)} requests, token ids sha256 "
          f"{built.token_ids_sha256}")
