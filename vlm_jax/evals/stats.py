"""The statistics the evaluators report beside their figures: a binomial proportion's interval,
and whether a paired difference between two scorers on the same queries is noise."""
from __future__ import annotations

import math

import numpy as np


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mcnemar(a, b) -> float:
    """The exact two-sided McNemar p-value of two scorers' per-query hits (bool [n] each): under
    the null each query that one gets right and the other wrong is a fair coin's toss."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    # P(X <= k) for X ~ Binomial(n, 1/2), summed in log space (n can be large), doubled.
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
            for i in range(k + 1)]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(x - top) for x in logs))
