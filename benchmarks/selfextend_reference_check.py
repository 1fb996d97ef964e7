"""Is a SelfExtend passkey miss the method or the GPU kernels? Score one headline prompt on the CPU (issue 13).

On the CPU, SelfExtend runs its float32 blockwise path (the reference the tests hold to float64), not the cuDNN /
flex kernels of the GPU. Compare its teacher-forced verdict and greedy answer with the GPU probe's for the same
prompt (``benchmarks/trainfree_probe.py``: seed 1234, 10 samples a depth; ``--index`` picks one). Slow: a 16k
prompt takes ~16 minutes on 2 cores.

    python benchmarks/selfextend_reference_check.py --window 4096 --target 16384 --length 16384 --depth 0.9
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from longctx.base_model import materialize_base_model  # noqa: E402
from longctx.evaluation.passkey import generate_passkey  # noqa: E402
from longctx.evaluation.scoring import greedy_generate, score_samples  # noqa: E402
from longctx.modeling import load_model, load_tokenizer, make_extended_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/selfextend_reference")
    ap.add_argument("--window", type=int, required=True)
    ap.add_argument("--group-size", type=int, default=0, help="0 = smallest that covers --target")
    ap.add_argument("--target", type=int, default=32768)
    ap.add_argument("--length", type=int, required=True)
    ap.add_argument("--depth", type=float, required=True)
    ap.add_argument("--index", type=int, default=0, help="sample within the depth (the probe draws 10)")
    args = ap.parse_args()
    work = Path(args.work)
    base, ext = work / "base", work / f"selfextend-g{args.group_size}-w{args.window}-t{args.target}"
    if not (base / "native.json").exists():
        materialize_base_model("embedded", base)
    if not (ext / "config.json").exists():
        make_extended_model(base, ext, "selfextend", {"window": args.window, "group_size": args.group_size},
                            args.target)
    tokenizer, model = load_tokenizer(base), load_model(ext, device=torch.device("cpu"))
    sample = generate_passkey(tokenizer, args.length, args.depth, 10, 1234, False)[args.index]
    t0 = time.perf_counter()
    ok = score_samples(model, [sample], 1)[0]
    answer = tokenizer.decode(greedy_generate(model, sample.input_ids, len(sample.answer_ids)))
    print(json.dumps({"extension": model.config.longctx_extension, "length": args.length, "depth": args.depth,
                      "index": args.index, "needle_depth": round(sample.meta["needle_depth"], 4),
                      "expected": sample.answer, "teacher_forced_ok": ok, "greedy": answer,
                      "dtype": str(next(model.parameters()).dtype), "seconds": round(time.perf_counter() - t0)}))


if __name__ == "__main__":
    main()
