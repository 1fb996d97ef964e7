"""benchmarks/scale_8b.py on the CPU (--smoke, tiny shape): both LoRA setups and the full-FT part run a step and report."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_benchmark_smoke(tmp_path):
    out = tmp_path / "scale.jsonl"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/scale_8b.py"), "--smoke", "--parts", "lora,maxlen",
                    "--lora-lengths", "32", "--plain-layers", "1", "--repeats", "1",
                    "--maxlen-lengths", "64:full:0", "--layer-lengths", "64", "--out", str(out)],
                   check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300,
                   capture_output=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    lora = {r["setup"]: r for r in rows if r.get("part") == "lora" and "setup" in r}
    assert set(lora) == {"baseline", "ours"} and lora["ours"]["plain_layers"] == 1
    assert all(r["tok_s"] > 0 for r in lora.values())
    predicted = [r for r in rows if r.get("setup", "").endswith("_predicted_2layers")]
    assert len(predicted) == 1 and predicted[0]["length"] == 64
