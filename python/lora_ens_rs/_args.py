"""Checks of the public API's arguments, done before they reach the compiled engine, so a bad
value raises the documented :class:`~lora_ens_rs.errors.InputError` naming the argument
(not a ``TypeError`` / ``OverflowError`` from the binding layer's conversions).

    threads = threads_arg(threads)                      # capped to the cores, with a warning
    n = int_arg("batch_size", batch_size, minimum=1)    # 0 < n < 2**63
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

from lora_ens_rs.errors import InputError

#: The largest integer the engine takes for sizes and counts (``i64``-safe).
MAX_INT = 2**63 - 1
#: Seeds are unsigned 64-bit integers.
MAX_SEED = 2**64 - 1


def int_arg(name: str, value: Any, *, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """``value`` as an int in ``minimum..=maximum``, else InputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if not minimum <= value <= maximum:
        raise InputError(f"{name} must be in {minimum}..{maximum}, got {value}")
    return int(value)


def float_arg(name: str, value: Any, *, minimum: float, maximum: float = math.inf) -> float:
    """``value`` as a finite float in ``minimum..=maximum``, else InputError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise InputError(f"{name} must be a finite number in [{minimum}, {maximum}], got {value}")
    return value


def text_arg(name: str, value: Any) -> str:
    """``value`` if it is a str, else InputError."""
    if not isinstance(value, str):
        raise InputError(f"{name} must be a str, got {type(value).__name__} {value!r}")
    return value


def texts_arg(name: str, values: Any) -> list[str]:
    """A sequence of str as a list, else InputError naming the first bad item."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise InputError(f"{name} must be a list of str, got {type(values).__name__}")
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise InputError(f"{name}[{i}] must be a str, got {type(v).__name__} {v!r}")
    return out


def threads_arg(threads: Any) -> int | None:
    """``threads`` checked (None, or an int >= 1) and capped to the cores with a warning."""
    if threads is None:
        return None
    n = int_arg("threads", threads, minimum=1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    if n > cores:
        warnings.warn(f"threads={n} is more than the {cores} cores; using {cores}", stacklevel=3)
        return cores
    return n
