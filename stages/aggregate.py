"""Stage aggregate: metrics/summary.json (flat keys for `dvc metrics diff`) and plots/*.png."""

from pathlib import Path

from longctx.aggregate import aggregate

if __name__ == "__main__":
    summary = aggregate(Path("metrics"), Path("plots"))
    print(f"aggregate: {len(summary)} keys -> metrics/summary.json")
