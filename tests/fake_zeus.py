"""A fake of Zeus 0.16's GPU manager (`zeus.device.get_gpus()`): the methods llm_energy calls,
with the same names, argument order and units (power mW, clocks MHz), and the read-only NVML
getters used on its GPU objects' handles. State lives in a JSON file so that a child process
(killed with SIGKILL in a test) and the test itself see the same GPUs.

Behaviour modelled on an H100 SXM: power limit 200-700 W (default 700 W), memory clocks
{1593, 2619} MHz, graphics clocks 345-1980 MHz in 15 MHz steps; a locked clock range holds the
clock at its maximum; `enforce_offset_w` makes the enforced limit differ from what was set
(a driver that rounds or a node-level cap); `permission=False` makes every setter raise Zeus's
ZeusGPUNoPermissionError, as NVML does for a user without CAP_SYS_ADMIN."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from zeus.device.gpu import ZeusGPUNoPermissionError

DEFAULT_MW = 700_000
GRAPHICS_MHZ = list(range(345, 1981, 15))
MEMORY_MHZ = [2619, 1593]


def default_state(n: int = 1, permission: bool = True) -> dict[str, Any]:
    return {"gpus": [{"uuid": f"GPU-fake-{i}", "limit_mw": DEFAULT_MW, "sm_lock": None,
                      "mem_lock": None, "throttle": 0, "enforce_offset_w": 0.0}
                     for i in range(n)],
            "permission": permission, "calls": []}


class FakeZeusGPUs:
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(self, path: Path, n: int = 1, permission: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.save(default_state(n, permission))

    # -- state
    def load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())

    def save(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.path)

    def gpu(self, index: int) -> dict[str, Any]:
        return self.load()["gpus"][index]

    def calls(self) -> list[str]:
        return self.load()["calls"]

    def _set(self, name: str, index: int, **values: Any) -> None:
        state = self.load()
        state["calls"].append(name)
        if not state["permission"]:
            self.save(state)
            raise ZeusGPUNoPermissionError("Insufficient Permissions")
        state["gpus"][index].update(values)
        self.save(state)

    # -- Zeus GPUs interface (zeus.device.gpu.common.GPUs)
    @property
    def gpus(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(gpu_index=i, handle=i) for i in range(len(self.load()["gpus"]))]

    def get_power_management_limit_constraints(self, gpu_index: int) -> tuple[int, int]:
        return (200_000, 700_000)

    def get_power_management_limit(self, gpu_index: int) -> int:
        g = self.gpu(gpu_index)
        return int(g["limit_mw"] + g["enforce_offset_w"] * 1000)

    def set_power_management_limit(self, gpu_index: int, power_limit_mw: int, block: bool = True) -> None:
        self._set("set_power_management_limit", gpu_index, limit_mw=power_limit_mw)

    def reset_power_management_limit(self, gpu_index: int, block: bool = True) -> None:
        self._set("reset_power_management_limit", gpu_index, limit_mw=DEFAULT_MW)

    def get_supported_memory_clocks(self, gpu_index: int) -> list[int]:
        return list(MEMORY_MHZ)

    def get_supported_graphics_clocks(self, gpu_index: int, memory_clock_mhz: int | None = None) -> list[int]:
        if memory_clock_mhz not in MEMORY_MHZ:  # NVML: invalid argument
            raise ValueError(f"unsupported memory clock {memory_clock_mhz}")
        return list(reversed(GRAPHICS_MHZ))

    def set_gpu_locked_clocks(self, gpu_index: int, min_clock_mhz: int, max_clock_mhz: int,
                              block: bool = True) -> None:
        self._set("set_gpu_locked_clocks", gpu_index, sm_lock=[min_clock_mhz, max_clock_mhz])

    def reset_gpu_locked_clocks(self, gpu_index: int, block: bool = True) -> None:
        self._set("reset_gpu_locked_clocks", gpu_index, sm_lock=None)

    def set_memory_locked_clocks(self, gpu_index: int, min_clock_mhz: int, max_clock_mhz: int,
                                 block: bool = True) -> None:
        self._set("set_memory_locked_clocks", gpu_index, mem_lock=[min_clock_mhz, max_clock_mhz])

    def reset_memory_locked_clocks(self, gpu_index: int, block: bool = True) -> None:
        self._set("reset_memory_locked_clocks", gpu_index, mem_lock=None)

    # -- the read-only NVML getters used on `gpus[i].handle` (the handle is the index here)
    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        g = self.gpu(handle)
        if clock == self.NVML_CLOCK_SM:
            return g["sm_lock"][1] if g["sm_lock"] else 1980
        return g["mem_lock"][1] if g["mem_lock"] else 2619

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self.gpu(handle)["throttle"]

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.gpu(handle)["uuid"]

    def is_default(self, index: int = 0) -> bool:
        g = self.gpu(index)
        return g["limit_mw"] == DEFAULT_MW and g["sm_lock"] is None and g["mem_lock"] is None
