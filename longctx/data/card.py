"""Data card statistics and the token-length histogram."""

from __future__ import annotations

import math


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile (an actual data value, so the card holds plain integers)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def length_stats(lengths: list[int]) -> dict:
    """p10/p50/p90/max (plus min, mean) of token lengths."""
    v = sorted(lengths)
    return {
        "min": v[0] if v else 0,
        "p10": percentile(v, 10),
        "p50": percentile(v, 50),
        "p90": percentile(v, 90),
        "max": v[-1] if v else 0,
        "mean": round(sum(v) / len(v), 1) if v else 0.0,
    }


def loss_token_share(label_tokens: int, total_tokens: int) -> float:
    """Fraction of tokens that carry loss (the rest are masked to -100), 4 decimals."""
    return round(label_tokens / total_tokens, 4) if total_tokens else 0.0



def plot_length_histogram(lengths_by_source: dict[str, list[int]], path_png) -> None:
    """Stacked histogram of sample token lengths per source, written to ``path_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(lengths_by_source)
    fig, ax = plt.subplots(figsize=(7, 4))
    data = [lengths_by_source[n] for n in names]
    if any(data):
        ax.hist(data, bins=40, stacked=True, label=names)
        ax.legend()
    ax.set_xlabel("tokens per sample")
    ax.set_ylabel("samples")
    ax.set_title("SFT sample lengths")
    fig.tight_layout()
    from longctx.io import atomic_savefig

    atomic_savefig(fig, path_png, dpi=100)
