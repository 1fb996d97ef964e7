"""The several-GPU benchmark (benchmarks/multi_gpu.py) runs end to end: 2 processes on the CPU with gloo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_process_smoke(tmp_path, mode):
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "benchmarks" / "multi_gpu.py"), "--mode", mode, "--smoke", "--lengths", "32,64",
           "--steps", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, env=env, cwd=ROOT)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq_len"] for r in rows] == [32, 64]  # rank 0 alone writes, one row per length
    for r in rows:
        assert r["mode"] == mode and r["gpus"] == 2 and not r["oom"]
        assert r["tokens_per_s_total"] == pytest.approx(2 * r["tokens_per_s_per_gpu"], abs=2)
        assert 0 < r["loss"] < 20  # a finite cross-entropy near log(vocab) for random weights


def test_fsdp2_shards_and_fills_every_parameter(tmp_path):
    """fully_shard on a meta model, then init_random_: every rank holds half of each matrix, none left empty."""
    script = tmp_path / "shard.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from torch.distributed.fsdp import fully_shard\n"
        "from longctx import shapes\n"
        "dist.init_process_group('gloo')\n"
        "m = shapes.meta_model(shapes.shape_config('tiny'), torch.float32)\n"
        "for layer in m.model.layers: fully_shard(layer)\n"
        "fully_shard(m)\n"
        "shapes.init_random_(m, 'cpu', seed=0)\n"
        "for name, p in m.named_parameters():\n"
        "    local = p.to_local()\n"
        "    assert torch.isfinite(local).all(), name\n"
        "    if p.ndim >= 2: assert local.shape[0] == p.shape[0] // 2 and local.std() > 0.01, name\n"
        "inv = m.model.rotary_emb.inv_freq\n"
        "assert torch.isfinite(inv).all() and inv[0] == 1.0\n"
        "dist.destroy_process_group()\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
