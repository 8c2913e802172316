"""Range checks of the numbers and names a person passes (torch-free, so a front end refuses a bad
value in milliseconds, before any model or dataset work)."""

from __future__ import annotations

import math
import re

from core.errors import UsageError

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def at_least(option: str, value: int | float | None, minimum: int = 1):
    """`value` when it is None or >= `minimum`; else UsageError naming `option`."""
    if value is not None and not value >= minimum:
        raise UsageError(f"{option} {value}: must be at least {minimum}")
    return value


def finite(option: str, value: float | None) -> float | None:
    """`value` when it is None or a finite number; else UsageError (NaN and infinities are no setting,
    and NaN is not even valid JSON)."""
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{option} {value}: must be a finite number")
    return value


def device_name(device: str | None) -> str | None:
    """`device` when it is None or names a torch device datadebug runs on (cpu, cuda, cuda:N, mps);
    else UsageError. Whether a GPU is there is checked where torch is loaded (core.model.lm.pick_device)."""
    if device is not None and not _DEVICE.match(device):
        raise UsageError(f"--device {device!r}: unknown device; expected cpu, cuda, cuda:N or mps")
    return device


def feature_list(option: str, text: str | None) -> list[int]:
    """Comma-separated SAE feature numbers ("12,40, 7") as ints; [] for None or blank. Raises
    UsageError naming `option` for anything else."""
    try:
        return [int(f) for f in (text or "").split(",") if f.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated feature numbers") from None
