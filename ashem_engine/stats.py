"""Mean, sample standard deviation and the 95 % confidence interval of a few per-seed values.

The interval is Student's: mean ± t(0.975, n - 1) · sd / sqrt(n). The t quantile is found by
bisection on the two-sided probability A(t | ν) = P(|T| < t), which for a whole number of
degrees of freedom ν has a closed form (Abramowitz & Stegun 26.7.3-4; θ = atan(t / √ν)):
    ν odd:  A = 2/π · (θ + sin θ · (cos θ + 2/3 cos³θ + ... + (2·4···(ν-3)) / (1·3···(ν-2))
                                                                    · cos^(ν-2) θ))
    ν even: A = sin θ · (1 + 1/2 cos²θ + ... + (1·3···(ν-3)) / (2·4···(ν-2)) · cos^(ν-2) θ)
so no statistics library is needed."""
from __future__ import annotations

import math
from typing import Optional, Sequence

CONFIDENCE = 0.95


def two_sided_probability(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with `dof` degrees of freedom (a whole number >= 1)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2 == 0:
        term = total = 1.0
        for k in range(1, dof // 2):
            term *= (2 * k - 1) / (2 * k) * cos2
            total += term
        return math.sin(theta) * total
    total = 0.0
    if dof > 1:
        term = total = math.cos(theta)
        for k in range(1, (dof - 1) // 2):
            term *= (2 * k) / (2 * k + 1) * cos2
            total += term
    return 2 / math.pi * (theta + math.sin(theta) * total)


def t_quantile(dof: int, confidence: float = CONFIDENCE) -> float:
    """The t with P(|T| < t) = confidence: t(0.975, dof) for the default 95 %."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {dof}")
    low, high = 0.0, 1.0
    while two_sided_probability(high, dof) < confidence:
        low, high = high, 2 * high
    for _ in range(200):  # to float precision
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if two_sided_probability(middle, dof) < confidence:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def aggregate(values: Sequence[float]) -> dict:
    """n, mean, sample sd and the 95 % interval (half-width, low, high) of `values`. With
    one value the sd and the interval are None (undefined); with none, the mean is too."""
    n = len(values)
    mean: Optional[float] = math.fsum(values) / n if n else None
    sd = half = low = high = None
    if n >= 2:
        sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        half = t_quantile(n - 1) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    return {"n": n, "mean": mean, "sd": sd, "half_width": half, "low": low, "high": high}


def is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def ppl_interval(ppls: Sequence[float]) -> dict:
    """The 95 % interval of per-seed perplexities, taken on their NLL (ln PPL) and shown back
    as PPL: the geometric mean exp(mean_nll) in [exp(mean_nll - half), exp(mean_nll + half)],
    which stays above 0 however wide the spread. Non-positive or missing PPLs are left out."""
    nlls = [math.log(p) for p in ppls if _positive(p)]
    summary = aggregate(nlls)
    mean, half = summary["mean"], summary["half_width"]
    return {"n": summary["n"], "mean_nll": mean, "half_nll": half,
            "ppl": _exp(mean), "ppl_lo": _exp(None if half is None else mean - half),
            "ppl_hi": _exp(None if half is None else mean + half)}


def paired_nll_difference(a: dict, b: dict) -> dict:
    """The mean of ln a[seed] - ln b[seed] over the seeds both have (a and b map seed -> PPL),
    its 95 % half-width, and the PPL ratio exp(diff) in [exp(diff - half), exp(diff + half)]."""
    diffs = [math.log(a[s]) - math.log(b[s]) for s in sorted(set(a) & set(b), key=str)
             if _positive(a[s]) and _positive(b[s])]
    summary = aggregate(diffs)
    diff, half = summary["mean"], summary["half_width"]
    return {"n": summary["n"], "diff": diff, "half": half, "ratio": _exp(diff),
            "ratio_lo": _exp(None if half is None else diff - half),
            "ratio_hi": _exp(None if half is None else diff + half)}


def _positive(x: object) -> bool:
    return is_number(x) and math.isfinite(x) and x > 0


def _exp(x: Optional[float]) -> Optional[float]:
    if x is None:
        return None
    return math.exp(x) if x < 709 else math.inf  # beyond a float: no overflow error
