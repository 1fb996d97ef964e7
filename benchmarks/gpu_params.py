"""Rewrite params.yaml for the GPU-host runs in docs/RESULTS.md (8k-32k evaluation, 100 dialogues of 8k).

Usage: python benchmarks/gpu_params.py [--steps 30] [--needle]
"""

import argparse

import yaml

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=30)
ap.add_argument("--needle", action="store_true", help="also run needle at 5 depths")
args = ap.parse_args()
p = yaml.safe_load(open("params.yaml"))
depths = [0.1, 0.3, 0.5, 0.7, 0.9]
p["eval"]["lengths"] = [8192, 16384, 32768]
p["eval"]["passkey"].update(depths=depths, samples=2, lengths=None)
p["eval"]["batch_size"] = 2
if args.needle:
    p["eval"]["needle"].update(depths=depths, samples=1)
p["data"].update(num_samples=100, max_tokens=8192)
p["train"].update(seq_len=8192, steps=args.steps)
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
