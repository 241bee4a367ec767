"""Which NVML devices a job's `CUDA_VISIBLE_DEVICES` names, by CUDA's own rules.

CUDA reads the variable as a comma-separated list whose entries are

    0, 1, ...                      a device index
    GPU-8932f937-...               a GPU UUID, or any prefix of one that names a single GPU
    MIG-<uuid> (or a prefix)       a MIG instance (driver R470+ form)
    MIG-GPU-<uuid>/<gi>/<ci>       a MIG instance (older form: parent GPU, GPU and compute
                                   instance ids)

and stops at the first entry that is none of these (`-1`, `none`, text): the entries before it
are the visible devices, the rest are ignored. We stop there too, and say so.

An entry in one of these forms that names no device on this node, a UUID prefix that matches
several, or a device named twice is an error (`GpuIdError`): CUDA would hide or reorder GPUs
while the meters read others, so the cell fails with the entry in the message rather than
metering the wrong GPU. NVML's own `nvmlDeviceGetHandleByUUID` answers "Not Found" for a UUID
prefix, which is why prefixes are resolved here against NVML's device list.

Indices are NVML's, i.e. PCI bus order; CUDA's default order (fastest first) can differ on
nodes with mixed GPUs unless `CUDA_DEVICE_ORDER=PCI_BUS_ID` (schedulers set UUIDs or that).

Zeus's device layer (`zeus.device.gpu.get_gpus`) parses the variable with `int()` and refuses
MIG entries, so it cannot do this mapping; `Gpu.nvml_index` is the NVML index to give it
(`telemetry/nvidia.py`; a MIG entry gives its parent GPU's). Zeus has no UUID or MIG getter,
so the `nvml` module used here is pynvml from `nvml_getters.load_nvml` (or a test's fake)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from llm_energy.telemetry.nvml_getters import NoGpus

_INDEX = re.compile(r"^\d+$")
_GPU_UUID = re.compile(r"^GPU-[0-9A-Fa-f-]+$")
_MIG_UUID = re.compile(r"^MIG-[0-9A-Fa-f-]+$")
_MIG_LEGACY = re.compile(r"^MIG-(GPU-[0-9A-Fa-f-]+)/(\d+)/(\d+)$")


class GpuIdError(RuntimeError):
    """A CUDA_VISIBLE_DEVICES entry that names no device, or more than one, on this node."""


@dataclass
class Gpu:
    label: str       # gpu0, gpu1 ... in the job's (CUDA) order
    handle: Any
    ident: str       # UUID where NVML gives one, else the NVML index
    nvml_index: int | None = None   # NVML index of the GPU (of the parent GPU for MIG)
    mig: bool = False               # a MIG instance (metered as its whole GPU, see nvidia.py)
    zeus_index: int | None = None   # position in Zeus's GPU manager (set by nvidia.open_job)


@dataclass
class VisibleIds:
    ids: list[str]                 # the entries CUDA uses, in order
    source: str | None             # the variable they came from; None when guessed
    warnings: list[str]            # a guess, or the entries CUDA ignores


def entry_form(item: str) -> str | None:
    """'index', 'gpu-uuid', 'mig-uuid', 'mig-legacy', or None for an entry CUDA stops at."""
    if _INDEX.match(item):
        return "index"
    if _MIG_LEGACY.match(item):
        return "mig-legacy"
    if _GPU_UUID.match(item):
        return "gpu-uuid"
    if _MIG_UUID.match(item):
        return "mig-uuid"
    return None


def parse_visible_devices(environ: dict[str, str] | None = None,
                          default_count: int = 1) -> VisibleIds:
    """The entries of CUDA_VISIBLE_DEVICES that CUDA uses (then Slurm's SLURM_STEP_GPUS /
    SLURM_JOB_GPUS, which hold indices); with none set, the first `default_count` GPUs with a
    warning, so that a job never meters every GPU of a shared node."""
    env = os.environ if environ is None else environ
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        value = env.get(var)
        if value is None:
            continue
        ids: list[str] = []
        warnings: list[str] = []
        items = value.split(",")
        for position, raw in enumerate(items):
            item = raw.strip()
            if entry_form(item) is None:
                rest = ",".join(items[position:])
                if item not in ("", "-1") or position + 1 < len(items):
                    warnings.append(
                        f"{var}={value!r}: entry {item!r} is not a GPU index or UUID, so CUDA "
                        f"stops there and ignores {rest!r}; metering {ids or 'no GPU'}")
                break
            ids.append(item)
        return VisibleIds(ids, var, warnings)
    return VisibleIds([str(i) for i in range(default_count)], None,
                      [(f"CUDA_VISIBLE_DEVICES is not set: metering GPU(s) 0..{default_count - 1}, "
                        "assumed to be the ones the backend uses")])


def visible_gpu_ids(environ: dict[str, str] | None = None,
                    default_count: int = 1) -> tuple[list[str], str | None]:
    """(entries, warning or None): `parse_visible_devices` in short."""
    found = parse_visible_devices(environ, default_count)
    return found.ids, "; ".join(found.warnings) or None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Device:
    uuid: str
    handle: Any
    nvml_index: int                   # the GPU's (the parent's for MIG)
    mig: tuple[int, int] | None = None   # (GPU instance id, compute instance id)


def _inventory(nvml: Any) -> list[_Device]:
    """Every GPU and MIG instance NVML lists on this node."""
    devices: list[_Device] = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        devices.append(_Device(_text(nvml.nvmlDeviceGetUUID(handle)), handle, index))
        try:
            mig_count = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
        except Exception:
            mig_count = 0
        for slot in range(mig_count):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                uuid = _text(nvml.nvmlDeviceGetUUID(mig))
            except Exception:
                continue
            try:
                ids = (int(nvml.nvmlDeviceGetGpuInstanceId(mig)),
                       int(nvml.nvmlDeviceGetComputeInstanceId(mig)))
            except Exception:
                ids = (-1, -1)
            devices.append(_Device(uuid, mig, index, ids))
    return devices


def _describe(devices: list[_Device]) -> str:
    gpus = [f"{d.nvml_index}: {d.uuid}" for d in devices if d.mig is None]
    migs = [d.uuid for d in devices if d.mig is not None]
    return (f"this node has {len(gpus)} GPU(s) [{', '.join(gpus)}]"
            + (f" and MIG instances [{', '.join(migs)}]" if migs else ""))


def _resolve(nvml: Any, item: str, inventory: list[_Device] | None) -> tuple[_Device, list[_Device] | None]:
    """The one device an entry names (and the inventory, once listed), or GpuIdError."""
    form = entry_form(item)
    if form == "index":
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(int(item))
        except Exception as exc:
            inventory = inventory if inventory is not None else _inventory(nvml)
            raise GpuIdError(f"no GPU with index {item} ({type(exc).__name__}: {exc}); "
                             f"{_describe(inventory)}") from None
        try:
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except Exception:
            uuid = item
        return _Device(uuid, handle, int(item)), inventory
    if form in ("gpu-uuid", "mig-uuid"):
        try:  # a full UUID: NVML finds it without listing every device
            handle = nvml.nvmlDeviceGetHandleByUUID(item)
            return _Device(item, handle, _parent_index(nvml, handle, form)), inventory
        except Exception:
            pass
    inventory = inventory if inventory is not None else _inventory(nvml)
    if form == "mig-legacy":
        parent_uuid, gi, ci = _MIG_LEGACY.match(item).groups()  # type: ignore[union-attr]
        parents = {d.nvml_index for d in inventory
                   if d.mig is None and d.uuid.lower().startswith(parent_uuid.lower())}
        matches = [d for d in inventory if d.mig == (int(gi), int(ci)) and d.nvml_index in parents]
    else:
        want_mig = form == "mig-uuid"
        matches = [d for d in inventory if (d.mig is not None) == want_mig
                   and d.uuid.lower().startswith(item.lower())]
    if len(matches) == 1:
        return matches[0], inventory
    if not matches:
        raise GpuIdError(f"no device matches {item!r}; {_describe(inventory)}")
    raise GpuIdError(f"{item!r} is ambiguous: it is a prefix of {len(matches)} devices' UUIDs "
                     f"({', '.join(d.uuid for d in matches)}); give more of the UUID")


def _parent_index(nvml: Any, handle: Any, form: str) -> int | None:
    try:
        if form == "mig-uuid":
            handle = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
        return int(nvml.nvmlDeviceGetIndex(handle))
    except Exception:
        return None


def job_gpus(nvml: Any, ids: list[str], variable: str = "CUDA_VISIBLE_DEVICES") -> list[Gpu]:
    """NVML handles for the given entries, in CUDA order, labelled gpu0, gpu1, ...

    Errors: NoGpus when `ids` is empty; GpuIdError naming the entry (and the devices this
    node has) when an entry names no device, more than one, or one already named."""
    gpus: list[Gpu] = []
    seen: dict[str, str] = {}
    inventory: list[_Device] | None = None
    for position, item in enumerate(ids):
        try:
            device, inventory = _resolve(nvml, item, inventory)
        except GpuIdError as exc:
            raise GpuIdError(f"{variable} entry {item!r} (position {position}) cannot be "
                             f"mapped to an NVML device: {exc}") from None
        if device.uuid in seen:
            raise GpuIdError(f"{variable} entries {seen[device.uuid]!r} and {item!r} name the "
                             f"same device ({device.uuid}): it would be metered twice")
        seen[device.uuid] = item
        gpus.append(Gpu(f"gpu{position}", device.handle, device.uuid, device.nvml_index,
                        mig=entry_form(item) in ("mig-uuid", "mig-legacy")))
    if not gpus:
        raise NoGpus(f"no GPU visible ({variable} names none)")
    return gpus
