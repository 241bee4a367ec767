"""Architecture rules that lint-imports (pyproject.toml, `make lint`) cannot express alone:
no cycle between subpackages counting every import (also those inside functions), the study
package importable without heavy libraries, and envs/*.yaml generated from requirements."""

import ast
import shutil
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

from conftest import ROOT

from llm_energy.execution.envs import check_envs, render_env, write_envs

PACKAGE = ROOT / "src" / "llm_energy"


def _imports(path: Path) -> set[str]:
    """Every llm_energy module `path` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("llm_energy.")}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _allowed_edges() -> set[tuple[str, str]]:
    """The known violations listed (with their reasons) in pyproject's import contracts."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    edges = set()
    for contract in config["contracts"]:
        for item in contract.get("ignore_imports", []):
            source, target = (s.strip() for s in item.split("->"))
            edges.add((source, target))
    return edges


def subpackage_graph(allowed: set[tuple[str, str]]) -> dict[str, set[tuple[str, str]]]:
    """subpackage -> {(importing module, imported module)} for imports across subpackages."""
    graph: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = _module(path)
        if source.count(".") < 1:
            continue  # llm_energy/__init__.py, cli.py: the top, imported by nothing inside
        for target in _imports(path):
            if target.count(".") < 1 or any(
                    source == a and (target == b or target.startswith(b + "."))
                    for a, b in allowed):
                continue
            here, there = source.split(".")[1], target.split(".")[1]
            if here != there and (PACKAGE / there).is_dir():
                graph[here].add((source, target))
    return graph


def find_cycle(graph: dict[str, set]) -> list[str] | None:
    nodes = {n: {t[1].split(".")[1] for t in edges} for n, edges in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(nodes.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(nodes):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_no_cycle_between_subpackages_counting_function_level_imports():
    graph = subpackage_graph(_allowed_edges())
    cycle = find_cycle(graph)
    detail = ""
    if cycle:
        detail = "; ".join(f"{s} -> {t}" for a, b in zip(cycle, cycle[1:])
                           for s, t in sorted(graph[a]) if t.split(".")[1] == b)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}: {detail}"


def test_cycle_finder_finds_a_function_level_cycle():
    """The check can fail: a lazy import from telemetry back up to measure is a cycle."""
    graph = subpackage_graph(set())
    graph["telemetry"].add(("llm_energy.telemetry.sampler", "llm_energy.measure.protocol"))
    assert find_cycle(graph) is not None


def test_study_imports_no_heavy_library():
    code = ("import sys, llm_energy.study.plan, llm_energy.study.layout, llm_energy.cli;"
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib', 'vllm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT / "src")}).stdout
    assert out.strip() == "[]"


def test_env_files_are_generated_from_requirements():
    assert check_envs(ROOT) == []


def test_workflow_takes_the_pipeline_environment_from_the_registry():
    """The rules' environment files are the registry's (`PIPELINE_ENVIRONMENT`): no file of
    the workflow spells one of its file names in code (comments are prose)."""
    from llm_energy.backends.registry import PIPELINE_ENVIRONMENT

    names = {Path(value).name for value in PIPELINE_ENVIRONMENT.values() if "/" in value}
    assert "pipeline.yaml" in names
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        spelled = sorted(name for name in names if name in code)
        assert not spelled, f"{path.name} spells {spelled}: use registry.PIPELINE_ENVIRONMENT"


def test_env_drift_is_detected(tmp_path):
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    (tmp_path / "envs").mkdir()
    write_envs(tmp_path)
    assert check_envs(tmp_path) == []
    main = tmp_path / "requirements" / "main.txt"
    main.write_text(main.read_text().replace("pandas==", "pandas==0.0.1\n#was "))
    assert any("envs/pipeline.yaml" in p for p in check_envs(tmp_path))
    (tmp_path / "envs" / "stray.yaml").write_text("name: stray\n")
    assert any("envs/stray.yaml has no requirements file" in p for p in check_envs(tmp_path))


def test_env_file_content(tmp_path):
    req = tmp_path / "x.txt"
    req.write_text("# header line\n#conda: openmpi\ntorch==2.13.0+cpu\nzeus==0.16.0\n")
    text = render_env(req)
    assert "# header line" in text and "  - python=3.11\n  - openmpi\n  - pip\n" in text
    assert "      - --extra-index-url https://download.pytorch.org/whl/cpu\n" in text
    assert "      - torch==2.13.0+cpu\n      - zeus==0.16.0\n" in text
    assert "name: llm-energy-x\n" in text


def test_pynvml_is_imported_only_by_the_nvml_getters_module():
    """NVIDIA GPUs are read through Zeus's device layer (telemetry/nvidia.py); the NVML reads
    Zeus lacks live in one documented module. Any other `import pynvml` in src/ is a second
    hardware client."""
    allowed = {PACKAGE / "telemetry" / "nvml_getters.py"}
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "pynvml" or n.startswith("pynvml.") for n in names):
                found.add(path)
    assert found == allowed, sorted(str(p.relative_to(PACKAGE)) for p in found - allowed)
