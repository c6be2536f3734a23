"""Formatting of event fields for display (no metrics are computed here)."""
from __future__ import annotations

import math
from typing import Optional

DASH = "–"


def _bad(x) -> bool:
    return x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def num(x: Optional[float], digits: int = 2) -> str:
    if x is None:
        return DASH
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:,.{digits}f}"


def ppl(x: Optional[float]) -> str:
    return num(x, 2)


def pct(x: Optional[float], digits: int = 1, sign: bool = True) -> str:
    """A fraction in [0, 1] shown as a percentage (without the % where a header says it)."""
    if _bad(x):
        return num(x)
    return f"{x * 100:.{digits}f}" + (" %" if sign else "")


def integer(x: Optional[int]) -> str:
    return DASH if x is None else f"{int(x):,}"


def conf(x: Optional[float]) -> str:
    return num(x, 4)


def rate(x: Optional[float]) -> str:
    """Tokens per second."""
    if _bad(x):
        return num(x)
    if x >= 10_000:
        return f"{x / 1000:,.1f}k"
    return f"{x:,.0f}"


def duration(seconds: Optional[float]) -> str:
    if _bad(seconds):
        return DASH
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def macs(x: Optional[float]) -> str:
    """Multiply-accumulates, 3 significant digits with an SI prefix: 4.21 TMAC."""
    if _bad(x):
        return num(x)
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                          (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}MAC"
    return f"{x:.3g} MAC"


def stamp(t: float) -> str:
    """The run clock as a log prefix."""
    return duration(t).rjust(7)


def tick(x: float) -> str:
    """An axis label, short: 3 significant digits, k / M for thousands / millions."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"
