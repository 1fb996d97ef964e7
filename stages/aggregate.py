"""Stage aggregate: summary.json (flat keys for `dvc metrics diff`), by_length.json and the plots."""

from longctx.aggregate import aggregate
from longctx.cli import stage_args

if __name__ == "__main__":
    args = stage_args(__doc__, {"metrics": "folder with eval_base/eval_extended/train.json",
                                "plots": "folder for the PNG plots"})
    summary = aggregate(args.metrics, args.plots)
    print(f"aggregate: {len(summary)} keys -> {args.metrics / 'summary.json'}")
