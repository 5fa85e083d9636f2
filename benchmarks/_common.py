"""Helpers shared by the benchmark scripts: timing, machine description, output.

The folder is not a package, so each script puts this folder on ``sys.path``
before importing this module or one of the two original scripts.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Iterable, Sequence

import torch

NOT_REACHED = "not reached"


def machine_info() -> dict:
    """Describe the machine and the library versions a figure was measured with."""
    import pyro

    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }


def median_seconds(run: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Return the median wall time of ``run()`` over ``repeats`` calls, after one warm-up call."""
    if warmup:
        run()
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def add_common_arguments(parser, default_repeats: int | None = 5) -> None:
    """Add ``--quick``, ``--out`` and, unless ``default_repeats`` is ``None``, ``--repeats`` to a parser."""
    parser.add_argument("--quick", action="store_true", help="run a tiny size (a smoke test of a few seconds)")
    if default_repeats is not None:
        parser.add_argument("--repeats", type=int, default=default_repeats,
                            help=f"timed repeats per measurement, whose median is reported (default {default_repeats})")
    parser.add_argument("--out", help="write the figures as JSON to this path")


def jsonable(value):
    """Convert tensors, NumPy scalars and non-finite floats into plain JSON values.

    ``NaN`` and infinities become ``None`` because JSON has no literal for them.
    """
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(figures: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(jsonable(figures), handle, indent=2)


def format_number(value) -> str:
    """Format a table cell: 3 significant digits for floats, ``–`` for a missing value."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.3g}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence]) -> str:
    """Lay out ``rows`` as a GitHub markdown table under the header ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_number(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"


def settings_lines(figures: dict, keys: Sequence[str]) -> str:
    """List the settings ``keys`` of ``figures`` as ``key: value`` lines under a table."""
    return "".join(f"- {key}: {figures[key]}\n" for key in keys if key in figures)


def emit(text: str) -> None:
    """Write a benchmark's table to standard output; this is the scripts' only output."""
    sys.stdout.write(text)
    sys.stdout.flush()


def ratios_to_fastest(seconds: dict) -> dict:
    """Divide each finite time by the smallest one; missing or infinite times map to ``None``."""
    finite = {name: value for name, value in seconds.items() if value is not None and math.isfinite(value)}
    if not finite:
        return {name: None for name in seconds}
    fastest = min(finite.values())
    return {name: (finite[name] / fastest if name in finite else None) for name in seconds}
