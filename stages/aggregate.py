"""Stage aggregate: summary.json (flat keys for `dvc metrics diff`), by_length.json and the plots."""

import argparse
from pathlib import Path

from longctx.aggregate import aggregate

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metrics", type=Path, required=True, help="folder with eval_base/eval_extended/train.json")
    ap.add_argument("--plots", type=Path, required=True, help="folder for the PNG plots")
    args = ap.parse_args()
    summary = aggregate(args.metrics, args.plots)
    print(f"aggregate: {len(summary)} keys -> {args.metrics / 'summary.json'}")
