"""How sure a score is, and how far a model reaches: Wilson intervals and RULER's effective length.

``wilson_interval`` is the score interval of Wilson (1927, JASA 22:209), the interval recommended
for binomial proportions by Brown, Cai & DasGupta (2001, Statistical Science 16:101, Eq. 4)::

    centre = (p + z²/2n) / (1 + z²/n)
    half   = z / (1 + z²/n) * sqrt(p (1 - p) / n + z² / 4n²)

with p = k/n the observed accuracy and z the normal quantile (1.96 for 95%). Unlike the normal
(Wald) interval it stays inside [0, 1] and does not collapse to a point at 0/n or n/n: with
n = 50 samples all correct the 95% interval is [92.9%, 100%].

``effective_length`` follows RULER (Hsieh et al. 2024, arXiv 2404.06654, Sec. 4): the longest
evaluated length at which the score still passes a threshold. RULER's threshold is a fixed score
(Llama-2-7B at 4k); ours is relative to the model being extended: ``fraction`` (0.9) times the
*base model's in-window score*, the mean of the base model's scores at every evaluated length
<= its native window. "Stays" is literal: the length counts only if every shorter evaluated length
passes too, so one lucky long cell after a failure does not extend it.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(lo, hi) of the Wilson score interval for ``correct`` successes out of ``n``."""
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"wilson_interval: need 0 <= correct <= n and n > 0, got {correct}/{n}")
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact at the edges (the formula gives 0 and 1 there up to rounding)
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return lo, hi


def in_window_score(scores: dict[int, float], native_window: int) -> float | None:
    """Mean score over evaluated lengths <= ``native_window``; None when there is none."""
    inside = [v for n, v in scores.items() if n <= native_window and not math.isnan(v)]
    return sum(inside) / len(inside) if inside else None


def effective_length(scores: dict[int, float], threshold: float) -> int:
    """Longest evaluated length L with score >= ``threshold`` at L and at every shorter length.

    0 when the shortest length already fails; the longest evaluated length when none fails (a lower
    bound then: the model may reach further than was measured).
    """
    reached = 0
    for n in sorted(scores):
        if math.isnan(scores[n]) or scores[n] < threshold - 1e-12:  # 0.9 * 1.0 vs a score of 0.9
            break
        reached = n
    return reached
