"""The real transformers backend, with one injected fault per cell (test-only).

LLM_ENERGY_TEST_FAULTS="2=raise@load,3=oom@generate": the cell whose `batch_size` is 2 raises
while loading, the one with 3 runs out of memory at its first `generate`. Cells not listed run
normally. Faults:

- raise:     a RuntimeError, as a backend bug would;
- oom:       a real allocation failure: the address-space limit is lowered to what the process
             uses plus 256 MiB, then torch allocates 1 GiB (torch's allocator raises);
- sigkill:   the process is killed with SIGKILL, as the kernel's OOM killer does;
- exit:      the interpreter exits with status 3 and no error file, as a crashing library does;
- hang:      starts two grandchildren (one in its process group, one in a session of its own),
             writes their pids to $LLM_ENERGY_TEST_FAULT_DIR/hang-<pid>.json, ignores SIGTERM and
             sleeps forever;
- orphan:    starts a grandchild in a session of its own (as the vLLM server backend does),
             records its pid in $LLM_ENERGY_TEST_FAULT_DIR/orphan-<pid>.json, then SIGKILLs itself;
- fail-once: raises on the first attempt (leaves a marker in the fault dir), then runs normally;
- short:     (@generate) every request stops at half the asked length, as at a context limit:
             the backend's own length check fails each record; nothing raises;
- server:    starts `fake_server.py` (a server, its engine and a worker in a session of its own,
             all ignoring SIGTERM) the way the vLLM server backend starts vLLM (under the guard,
             `processes.start_guarded`), writes every pid to
             $LLM_ENERGY_TEST_FAULT_DIR/server-<pid>.json and then waits forever, as a long
             engine start does.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from llm_energy.backends.base import fail_short_records, per_request
from llm_energy.backends.transformers_backend import TransformersBackend


def _faults() -> dict[str, str]:
    items = filter(None, os.environ.get("LLM_ENERGY_TEST_FAULTS", "").split(","))
    return dict(item.split("=", 1) for item in items)


def _fault_dir() -> Path:
    return Path(os.environ["LLM_ENERGY_TEST_FAULT_DIR"])


def inject(fault: str, key: str) -> None:
    if fault == "raise":
        raise RuntimeError(f"injected backend failure (batch_size={key})")
    if fault == "oom":
        import torch

        used = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (used + 256 * 2**20, resource.RLIM_INFINITY))
        torch.ones(2**30, dtype=torch.uint8)  # raises: DefaultCPUAllocator: can't allocate memory
        raise AssertionError("the allocation did not fail")
    if fault == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "exit":
        sys.stdout.flush()
        os._exit(3)
    if fault == "hang":
        sleep = ["sleep", "600"]
        in_group = subprocess.Popen(sleep)
        own_session = subprocess.Popen(sleep, start_new_session=True)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        record = _fault_dir() / f"hang-{os.getpid()}.json"
        record.write_text(json.dumps({"measure": os.getpid(), "in_group": in_group.pid,
                                      "own_session": own_session.pid}))
        print(f"hanging (pid {os.getpid()})", flush=True)
        while True:
            time.sleep(60)
    if fault == "orphan":
        escaped = subprocess.Popen(["sleep", "600"], start_new_session=True)
        (_fault_dir() / f"orphan-{os.getpid()}.json").write_text(json.dumps({"orphan": escaped.pid}))
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "server":
        from llm_energy.system.processes import start_guarded

        record = _fault_dir() / f"server-{os.getpid()}.json"
        pending = record.with_suffix(".pids")
        guard = start_guarded([sys.executable, str(Path(__file__).with_name("fake_server.py")),
                               str(pending)], grace_s=1.0)
        deadline = time.monotonic() + 60
        while not pending.exists():
            if time.monotonic() > deadline or guard.poll() is not None:
                raise RuntimeError("the fake server did not start")
            time.sleep(0.05)
        pids = {"measure": os.getpid(), "guard": guard.pid, **json.loads(pending.read_text())}
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(pids))
        tmp.replace(record)
        print(f"serving (guard {guard.pid})", flush=True)
        while True:
            time.sleep(60)
    if fault == "fail-once":
        marker = _fault_dir() / f"failed-once-{key}"
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected transient failure (batch_size={key})")
        return
    if fault:
        raise AssertionError(f"unknown fault {fault!r}")


class FaultyBackend(TransformersBackend):
    def _fault(self, phase: str) -> None:
        key = str(self.settings.get("batch_size"))
        fault, _, where = _faults().get(key, "").partition("@")
        if fault and (where or "load") == phase:
            print(f"injecting {fault}@{phase} (batch_size={key})", flush=True)
            inject(fault, key)

    def load(self):
        self._fault("load")
        return super().load()

    def generate(self, prompts, output_tokens, exact=True):
        if _faults().get(str(self.settings.get("batch_size"))) == "short@generate":
            targets = per_request(output_tokens, len(prompts))
            records = super().generate(prompts, [max(1, n // 2) for n in targets], exact)
            fail_short_records(records, targets, "transformers", " (injected context limit)")
            return records
        if not getattr(self, "_generated", False):
            self._generated = True
            self._fault("generate")
        return super().generate(prompts, output_tokens, exact)
