"""The protocol's GPU power limit and clocks phase (mixed into `CellRunner`): lock the cell's
GPUs, restore what a crashed cell left, check and apply the cell's settings before the model
loads, read them back per cycle, restore them at the end (telemetry/gpu_control.py)."""

from __future__ import annotations

from typing import Any

from llm_energy.telemetry import gpu_control as gc


class GpuSettingsPhase:
    """Needs `self.measurement`, `self.device`, `self.detection` and `self.log`."""

    _gpu_control: gc.GpuControl | None = None
    _gpu_locks: gc.GpuLocks | None = None

    def _gpu_settings(self) -> gc.GpuSettings:
        return gc.GpuSettings.from_measurement(self.measurement)  # type: ignore[attr-defined]

    def _apply_gpu_settings(self, warnings: list[str]) -> None:
        """Raises OutOfRange / NoPermission / GpuControlError: the cell fails with that line.
        On a cell without GPU axes, a failure to open Zeus only costs the read-back."""
        if self.device != "cuda":  # type: ignore[attr-defined]
            return
        settings = self._gpu_settings()
        nvidia = self.detection.nvidia  # type: ignore[attr-defined]
        if not settings.empty and nvidia is not None and nvidia.mig:
            raise gc.GpuControlError(
                f"cannot set {settings.describe()} on a MIG slice: power limits and clocks are "
                "device-wide and would change every slice of the GPU (other users' jobs "
                "included); run GPU power/clock axes on whole GPUs")
        state_dir = self.measurement.get("gpu_state_dir", gc.DEFAULT_STATE_DIR)  # type: ignore[attr-defined]
        idents = [g.ident for g in self.detection.gpus]  # type: ignore[attr-defined]
        self._gpu_locks = gc.GpuLocks(state_dir, idents, exclusive=not settings.empty).__enter__()
        warnings.extend(self._gpu_locks.notes)
        try:
            gpus = gc.zeus_gpus()
            zeus_idents = gc.gpu_idents(gpus)
        except gc.GpuControlError as exc:
            if not settings.empty:
                raise
            if gc.pending_markers(state_dir, idents):
                raise gc.GpuControlError(f"a GPU still has settings left by an earlier cell "
                                         f"(markers in {state_dir}) and cannot be reset: {exc}") from exc
            warnings.append(f"GPU settings not read back: {exc}")
            return
        if not settings.empty and sorted(zeus_idents) != sorted(idents):
            raise gc.GpuControlError(
                f"Zeus sees GPUs {zeus_idents}, the cell meters {idents}: refusing to change "
                "GPUs the cell does not meter")
        if not settings.empty:
            from llm_energy.telemetry.nvidia import zeusd_index_mismatch

            problem = zeusd_index_mismatch()
            if problem:
                raise gc.GpuControlError(f"cannot set {settings.describe()}: {problem}")
        self._gpu_control = gc.GpuControl(gpus, zeus_idents, settings, state_dir,
                                          log=self.log)  # type: ignore[attr-defined]
        self._gpu_control.apply()

    def _gpu_cycle_columns(self, samples: list[Any], start_s: float, end_s: float,
                           warnings: list[str]) -> dict[str, Any]:
        """Asked values (setting columns), what the GPUs enforce during the cycle, and the
        mismatch flag; a line per mismatch in the cycle's warnings."""
        ctl = self._gpu_control
        if ctl is None:
            return {}
        readings = gc.cycle_readings(ctl.read_back(), samples, start_s, end_s)
        warnings.extend(f"GPU setting not in effect: {line}"
                        for line in gc.mismatches(ctl.settings, readings))
        return {**ctl.settings.columns(), **gc.run_columns(ctl.settings, readings)}

    def _restore_gpu_settings(self) -> list[str]:
        """Reset what this cell set and release its GPU locks; one line per failure."""
        failures: list[str] = []
        if self._gpu_control is not None:
            failures = self._gpu_control.restore()
            self._gpu_control = None
        if self._gpu_locks is not None:
            self._gpu_locks.__exit__()
            self._gpu_locks = None
        return [f"GPU settings not restored (the next cell on this GPU retries): {f}"
                for f in failures]
