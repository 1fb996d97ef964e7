"""benchmarks/scale_8b.py on the CPU (--smoke, tiny shape): both LoRA setups and the full-FT part run a step and report."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_benchmark_smoke(tmp_path):
    out = tmp_path / "scale.jsonl"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/scale_8b.py"), "--smoke", "--parts", "lora,maxlen,longest",
                    "--lora-lengths", "32", "--plain-layers", "1", "--repeats", "1",
                    "--maxlen-lengths", "64:full:0", "--layer-lengths", "64", "--longest-length", "256",
                    "--mlp-chunk-tokens", "64", "--out", str(out)],
                   check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300,
                   capture_output=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    lora = {r["setup"]: r for r in rows if r.get("part") == "lora" and "setup" in r}
    assert set(lora) == {"baseline", "ours"} and lora["ours"]["plain_layers"] == 1
    assert all(r["tok_s"] > 0 for r in lora.values())
    predicted = [r for r in rows if r.get("setup", "").endswith("_predicted_2layers")]
    assert len(predicted) == 1 and predicted[0]["length"] == 64
    # the longest part: a two-layer sizing run at a quarter of the length, a plan, the full model's step
    longest = {r["setup"]: r for r in rows if r.get("part") == "longest" and "setup" in r}
    assert longest["ours_lora_full_tiled_offload_2layers"]["length"] == 64
    assert longest["plan"]["length"] == longest["ours_lora_full_tiled_offload"]["length"] == 256
    assert longest["ours_lora_full_tiled_offload"]["tok_s"] > 0 and longest["host"]["host_max_rss_gib"] > 0


def test_finetune_scale_check_and_decode_smoke(tmp_path):
    """The two python parts of benchmarks/gpu_host_scale_check.sh on the CPU (tiny shape): the finetune stage's
    code path with train.keep_activations writes an adapter and reports each step; the decode part reports plain
    and SelfExtend through generate() with a dynamic cache per SDPA backend and with a static cache (compiled on a
    GPU; eager here)."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "finetune.jsonl"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/finetune_scale_check.py"), "--smoke", "--steps", "2",
                    "--workdir", str(tmp_path / "work"), "--out", str(out)],
                   check=True, cwd=ROOT, env=env, timeout=300, capture_output=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["train"]["keep_activations"] == 1 and rows[0]["train"]["lora"]["r"] == 16
    assert [r["step"] for r in rows if r.get("part") == "finetune_step"] == [1, 2]
    summary = rows[-1]
    assert summary["part"] == "finetune" and summary["tok_s"] > 0
    assert "adapter_model.safetensors" in summary["adapter_files"]

    out = tmp_path / "decode.jsonl"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/scale_8b.py"), "--smoke", "--parts", "decode",
                    "--decode-prefill", "48", "--decode-tokens", "2", "--decode-backends", "auto,flash",
                    "--decode-attention", "package,sdpa", "--out", str(out)],
                   check=True, cwd=ROOT, env=env, timeout=300, capture_output=True)
    decode = [json.loads(line) for line in out.read_text().splitlines()]
    rows = [r for r in decode if r.get("part") == "decode" and "method" in r]
    got = {(r["method"], r.get("decode_attention"), r["cache"], r["sdpa_backend"]) for r in rows}
    settings = (("dynamic", "auto"), ("dynamic", "flash"), ("static", "auto"))
    assert got == ({("none", None, c, b) for c, b in settings}
                   | {("selfextend", a, c, b) for a in ("package", "sdpa") for c, b in settings})
    check = [r for r in decode if r.get("check") == "decode_attention"]
    assert [r["attention"] for r in check] == ["sdpa"] and check[0]["max_abs_err_vs_package"] < 0.05
    assert all(r["decode_tok_s"] > 0 and "result" not in r for r in rows), rows
    assert all(r["ratio_vs_plain"] > 0 and r["ratio_vs_plain_dynamic"] > 0 for r in rows if r["method"] == "selfextend")


def test_prefill_smoke_reports_ratio_check_and_profile(tmp_path):
    """The prefill part on the CPU: ratio_vs_plain on every row, SelfExtend's attention check per causal kernel, and
    the --profile-prefill table next to --out."""
    out = tmp_path / "prefill.jsonl"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/scale_8b.py"), "--smoke", "--parts", "prefill",
                    "--methods", "selfextend", "--prefill-lengths", "128,256", "--profile-prefill", "256",
                    "--out", str(out)], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                   timeout=300, capture_output=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    runs = {(r["method"], r["length"]): r for r in rows if r.get("part") == "prefill" and "method" in r}
    assert set(runs) == {(m, T) for m in ("plain", "selfextend") for T in (128, 256)}
    assert all(r["ratio_vs_plain"] > 0 for r in runs.values())
    checks = [r for r in rows if r.get("check") == "selfextend_attention"]
    assert [r["kernel"] for r in checks] == ["cudnn", "flash"]
    assert all(r["max_abs_err"] < 0.05 and r["g1_err"] < 0.05 for r in checks)
    assert "profile selfextend prefill at 256" in out.with_suffix(".selfextend_profile.txt").read_text()
