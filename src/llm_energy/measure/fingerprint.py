"""The code fingerprint: which measurement code a cell was measured with.

Recorded in every cell's `provenance.json`; `llm-energy stale` lists the cells whose record
differs from the current code. It covers only the code that runs in a measurement, in a
form that ignores what cannot change a number:

- **which code**: the subpackages in `MEASURED_CODE` (what the measuring process imports to
  load, drive, meter and record a cell). Left out: `study/` (validation, matrix: what a cell
  measures is its configuration, hashed into its id), `execution/` (job limits, retries,
  process clean-up: operational), `analysis/` (after the measurement; re-run by
  aggregation), `models/` (builds demo weights, an input file of the cell), `cli.py` and
  `__init__.py`. `NOT_FINGERPRINTED` names the modules of those that the measured code
  imports, and why;
- **which form**: the token stream of each module (`tokenize`) without comments, blank lines,
  line continuations and docstrings; string literals by value (quote style is formatting);
  indentation by structure, not width. Python 3.12 split f-strings into several tokens;
  they are joined back into one, so every Python version of the environments (the
  pipeline's `.venv`, `.venvs/vllm`, conda's 3.12 for TensorRT-LLM) computes the same hash.

Standard library only: any interpreter can compute it from the source tree.
"""

from __future__ import annotations

import ast
import hashlib
import io
import tokenize
from collections.abc import Iterator
from pathlib import Path

#: Subpackages of `llm_energy` whose code runs in a measurement.
MEASURED_CODE = ("backends", "loadgen", "measure", "results", "telemetry", "workload")
#: Single modules outside those subpackages that measured code runs (none today).
MEASURED_MODULES: tuple[str, ...] = ()

#: Modules outside MEASURED_CODE that measured code imports, and why a change to them does
#: not make a cell stale.
NOT_FINGERPRINTED = {
    "llm_energy.study.config": "validation and defaults; a cell's values are its config, "
                               "hashed into its id",
    "llm_energy.study.workload_spec": "validation of the workload keys; a cell's workload is "
                                      "its config, hashed into its id, and the workload "
                                      "file, an input of its job",
    "llm_energy.study.workload_sweep": "sweep axes (validation) and the workload columns of "
                                       "a cell's rows: labels of its config, hashed into its id",
    "llm_energy.study.cellspec": "the typed cell configuration (validation and defaults, as "
                                 "study.config), hashed into its id",
    "llm_energy.system.processes": "stops leftover processes after a cell (operational)",
    "llm_energy.analysis.stale": "package-name lists recorded in provenance",
}

FINGERPRINT_LENGTH = 16

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING}
_STRUCTURE = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
# 3.12+: an f-string is FSTRING_START ... FSTRING_END (3.14: TSTRING_* for t-strings).
_OPENING = {getattr(tokenize, n) for n in ("FSTRING_START", "TSTRING_START") if hasattr(tokenize, n)}
_CLOSING = {getattr(tokenize, n) for n in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, n)}


def _docstring_starts(tree: ast.AST) -> set[tuple[int, int]]:
    """(line, column) where each module, class and function docstring starts."""
    starts = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                starts.add((body[0].value.lineno, body[0].value.col_offset))
    return starts


def _slice(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    if start[0] == end[0]:
        return lines[start[0] - 1][start[1]:end[1]]
    return (lines[start[0] - 1][start[1]:] + "".join(lines[start[0]:end[0] - 1])
            + lines[end[0] - 1][:end[1]])


def _string(text: str) -> str:
    """A string literal by value ('a' and "a" are one token); f-strings as written."""
    try:
        return repr(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return text


def normalized_tokens(source: str) -> Iterator[str]:
    """The tokens of a module that carry meaning, one string each, the same under every
    Python version from 3.8 on. Raises SyntaxError for a module that does not parse."""
    docstrings = _docstring_starts(ast.parse(source))
    lines = source.splitlines(keepends=True)
    in_docstring = False
    depth, opened_at = 0, (0, 0)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        kind = tok.type
        if depth:                       # inside an f-string (3.12+): join it back
            depth += (kind in _OPENING) - (kind in _CLOSING)
            if not depth:
                yield "STRING " + _slice(lines, opened_at, tok.end)
            continue
        if kind in _OPENING:
            depth, opened_at = 1, tok.start
            continue
        if kind in _SKIPPED:
            continue
        if kind == tokenize.STRING and (tok.start in docstrings or in_docstring):
            in_docstring = True         # also the parts of an implicitly joined docstring
            continue
        if in_docstring:
            in_docstring = False
            if kind == tokenize.NEWLINE:  # the docstring's statement ends: drop it whole
                continue
        if kind in _STRUCTURE:
            yield tokenize.tok_name[kind]
        elif kind == tokenize.STRING:
            yield "STRING " + _string(tok.string)
        else:
            yield tok.string


def code_fingerprint(package_root: str | Path | None = None) -> str:
    """16 hex digits of SHA-256 over the normalized tokens of every module under
    `MEASURED_CODE` (path relative to the package root, then its tokens), in path order.
    `package_root` is the `llm_energy` directory (default: this installation's)."""
    root = Path(package_root) if package_root is not None else _PACKAGE_ROOT
    digest = hashlib.sha256()
    paths = sorted([*(p for sub in MEASURED_CODE for p in (root / sub).rglob("*.py")),
                    *(path for m in MEASURED_MODULES
                      if (path := root.joinpath(*m.split(".")[1:]).with_suffix(".py")).is_file())])
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        for token in normalized_tokens(path.read_text(encoding="utf-8")):
            digest.update(token.encode() + b"\0")
    return digest.hexdigest()[:FINGERPRINT_LENGTH]
