"""Measure one cell inside its backend's environment (run by `runner.py` as a child process).

    python -m llm_energy.measure --cell cell.json --model-path DIR --out results/cells/...

On an exception it writes `.error.json` next to the outputs and exits 1; the runner turns
that into a `status = failed` row."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

ERROR_FILE = ".error.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_energy.measure", description=__doc__)
    parser.add_argument("--cell", required=True, help="cell configuration JSON file")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--out", required=True, help="cell output directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ERROR_FILE).unlink(missing_ok=True)
    cell = json.loads(Path(args.cell).read_text())
    try:
        from llm_energy import provenance, results
        from llm_energy.protocol import CellRunner

        runner = CellRunner(cell, args.model_path, log=lambda m: print(m, flush=True))
        output = runner.run()
        results.write_cell(out, output.runs, output.requests, output.timeseries,
                           provenance.collect(cell, output.energy_sources))
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the runner
        traceback.print_exc()
        error = {"type": type(exc).__name__, "message": str(exc).strip().splitlines()[0][:500]
                 if str(exc).strip() else type(exc).__name__}
        (out / ERROR_FILE).write_text(json.dumps(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
