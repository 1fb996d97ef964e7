"""The evaluation suite end to end on a tiny model: every task enabled, metrics keys, heat maps."""

from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from longctx.aggregate import aggregate
from longctx.evaluation.samples import load_samples, save_samples
from longctx.evaluation.suite import evaluate_model, make_eval_samples
from longctx.io import atomic_write_json
from longctx.params import build, EvalParams
from tests.conftest import tiny_llama_config
from tests.test_eval_tasks import build_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "longbench"


def eval_params(**over):
    raw = {
        "lengths": [600], "seed": 5, "use_chat_template": False, "greedy_check": 2,
        "passkey": {"depths": [0.2, 0.8], "samples": 1, "lengths": None},  # the default is params.yaml's CPU list
        "perplexity": {"buckets": 2},
        "needle": {"enabled": True, "depths": [0.5], "samples": 1},
        "ruler": {"enabled": True, "samples": 1},
        "dialog_recall": {"enabled": True, "depths": [0.1], "samples": 1},
        "longbench": {"enabled": True, "tasks": ["hotpotqa", "trec"], "source": str(FIXTURES), "max_length": 400,
                      "limit": 2},
    }
    raw.update(over)
    return build(EvalParams, raw, "eval")


def test_all_tasks_generate_score_and_plot(tmp_path):
    tok = build_tokenizer()
    ep = eval_params()
    samples = make_eval_samples(tok, ep)
    tasks = {s.task for s in samples}
    assert {"passkey", "perplexity", "needle", "multikey", "multivalue", "variable_tracking", "common_words",
            "dialog_recall", "longbench.hotpotqa", "longbench.trec"} <= tasks
    # Stored once, byte-identical on reload and on regeneration.
    save_samples(samples, tmp_path / "samples.jsonl")
    assert load_samples(tmp_path / "samples.jsonl") == samples
    assert make_eval_samples(tok, ep) == samples

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tok), max_position_embeddings=1024)).eval()
    metrics = evaluate_model(model, samples, ep, tokenizer=tok)
    for key in ("passkey.600", "passkey.600.d0.2", "needle.600.d0.5", "multikey.600", "variable_tracking.600",
                "common_words.600", "dialog_recall.600", "ppl.600", "ppl.600.bucket1", "longbench.hotpotqa",
                "longbench.trec"):
        assert key in metrics, key
    assert metrics["check.greedy_agreement"] == 1.0  # teacher forcing and greedy decoding agree
    assert 0 <= metrics["longbench.trec"] <= 100

    atomic_write_json(tmp_path / "eval_base.json", metrics)
    atomic_write_json(tmp_path / "eval_extended.json", metrics)
    summary = aggregate(tmp_path, tmp_path / "plots")
    assert summary["passkey.600.base"] == metrics["passkey.600"]
    assert (tmp_path / "plots" / "heatmaps" / "passkey_base.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "heatmaps" / "needle_extended.png").exists()
