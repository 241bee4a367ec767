"""The export type-checked by TypeScript against the leaderboard app's own `src/types.ts`.

`test_mlenergy_app_schema.py` holds JSON Schemas written from those types; this test asks the
TypeScript compiler itself. It needs a checkout of ml-energy/leaderboard with its packages
installed (`git clone https://github.com/ml-energy/leaderboard && cd leaderboard && npm ci`),
named by MLENERGY_APP_DIR, and is skipped without one (the app's code is not part of this
repository). Every file the app fetches is imported as a JSON module (resolveJsonModule) and
assigned to the app's type (`IndexData`, `TaskData`, `ModelDetail`) under `--strict`: a missing
field, a `null` where the type says number or string, or a missing `architectures` key fails.
Counts as JSON integers are beyond TypeScript's types: the schema test checks those."""

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
from test_export_merge import other_gpu_summary, other_lengths, study

from llm_energy.cli import main

APP = Path(os.environ.get("MLENERGY_APP_DIR", "/nonexistent"))
TSC = APP / "node_modules" / ".bin" / "tsc"
pytestmark = pytest.mark.skipif(
    not (APP / "src" / "types.ts").is_file() or not TSC.is_file(),
    reason="MLENERGY_APP_DIR is not an ml-energy/leaderboard checkout with node_modules "
           "(npm ci)")

TYPES = (("index.json", "IndexData"), ("tasks", "TaskData"), ("models", "ModelDetail"))


def tsc_check(data: Path, work: Path) -> subprocess.CompletedProcess:
    """Run tsc --strict over one `const x: <App type> = <file>` per file the app fetches."""
    work.mkdir()
    files = [(data / "index.json", "IndexData")]
    files += [(p, "TaskData") for p in sorted((data / "tasks").glob("*.json"))]
    files += [(p, "ModelDetail") for p in sorted((data / "models").glob("*.json"))]
    lines = [f"import type {{ IndexData, TaskData, ModelDetail }} from "
             f"{json.dumps(str(APP / 'src' / 'types'))};"]
    for i, (path, app_type) in enumerate(files):
        lines += [f"import d{i} from {json.dumps(str(path))};",
                  f"export const v{i}: {app_type} = d{i};"]
    (work / "check.ts").write_text("\n".join(lines) + "\n")
    (work / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "resolveJsonModule": True,
                            "module": "ESNext", "moduleResolution": "Bundler",
                            "target": "ES2020", "isolatedModules": True, "types": []},
        "files": ["check.ts"]}))
    return subprocess.run([str(TSC), "-p", str(work / "tsconfig.json")], capture_output=True,
                          text=True, timeout=300)


def test_export_and_merge_pass_the_apps_own_types(tmp_path):
    a = study(tmp_path, "h100")
    b = study(tmp_path, "a100", other_gpu_summary(), other_lengths())
    merged = tmp_path / "data"
    assert main(["export-merge", str(a), str(b), "--out", str(merged)]) == 0
    for name, data in (("one", a / "mlenergy"), ("merged", merged)):
        assert len(list((data / "models").glob("*.json"))) >= 2
        result = tsc_check(data, tmp_path / f"tsc-{name}")
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_fails_on_the_faults_the_issue_found(tmp_path):
    """A null GPU name, a missing field and an index without `architectures` each fail tsc."""
    data = study(tmp_path, "h100") / "mlenergy"
    task_path = data / "tasks" / "h100.json"
    good_task = json.loads(task_path.read_text())
    index_path = data / "index.json"
    good_index = json.loads(index_path.read_text())
    faults = {"null": ("gpu_model", None), "missing": ("architecture", ...)}
    for i, (kind, (field, value)) in enumerate(faults.items()):
        task = copy.deepcopy(good_task)
        if value is ...:
            del task["configurations"][0][field]
        else:
            task["configurations"][0][field] = value
        task_path.write_text(json.dumps(task))
        result = tsc_check(data, tmp_path / f"tsc-{i}")
        assert result.returncode != 0 and field in result.stdout, (kind, result.stdout)
    task_path.write_text(json.dumps(good_task))
    index_path.write_text(json.dumps({k: v for k, v in good_index.items()
                                      if k != "architectures"}))
    result = tsc_check(data, tmp_path / "tsc-index")
    assert result.returncode != 0 and "architectures" in result.stdout, result.stdout
