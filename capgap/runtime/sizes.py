"""Parameter counts as people write them: "30M", "1.2B", "135000000"."""

import math
import re

from capgap.runtime.errors import CapgapError

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_SIZE = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*$", re.I)


def parse_size(size) -> int:
    """"30M" -> 30_000_000; plain numbers pass through. One parser for CLI and configs."""
    if isinstance(size, bool):
        raise CapgapError(f"size {size!r} is not a parameter count (e.g. 30M, 1.2B)")
    if isinstance(size, (int, float)):
        value = float(size)
    else:
        m = _SIZE.match(str(size))
        if not m:
            raise CapgapError(f"size {size!r} is not a parameter count (e.g. 30M, 1.2B, 135000000)")
        value = float(m.group(1).replace("_", "")) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise CapgapError(f"size {size!r} must be a positive parameter count")
    return round(value)


def format_size(n: float) -> str:
    """162_322_944 -> "162M", 1_414_647_808 -> "1.41B": three significant digits.

    The unit is chosen after rounding, so 999_742 is "1M", not "1e+03K"."""
    rounded = float(f"{n:.3g}")
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(rounded) >= scale:
            return f"{rounded / scale:.3g}{unit}"
    return f"{rounded:.3g}"
