"""Paper recipes: every preset in params.yaml parses, the merge is recursive, ``recipe: none`` changes
nothing, and the Entropy-ABF recipe trains where the entropy factor is active (losses differ from ABF)."""

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from longctx.modeling import make_extended_model
from longctx.params import ParamsError, TrainParams, apply_recipe, deep_merge, parse_params
from longctx.training import finetune
from tests.test_modeling import base_dir  # noqa: F401  (module fixture: a tiny materialised base model)

ROOT = Path(__file__).resolve().parents[1]
NATIVE = 8192  # the embedded model's window, which the shipped recipes are scaled to
PAPER_RECIPES = ("entropy_abf", "cream_chat", "cream_base", "pose", "pi", "yarn")


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_is_no_recipe_and_changes_nothing(raw):
    assert raw["recipe"] == "none" and raw["recipes"]["none"] == {}
    without = {k: v for k, v in raw.items() if k not in ("recipe", "recipes")}
    assert parse_params(raw).data == parse_params(without).data
    assert parse_params(raw).train == parse_params(without).train


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_each_recipe_parses_and_applies(raw, name):
    r = dict(raw, recipe=name)
    p = parse_params(r)
    rec = raw["recipes"][name]
    for key, value in rec.get("train", {}).items():
        assert getattr(p.train, key) == pytest.approx(value) if isinstance(value, float) else getattr(p.train, key) == value
    for key, value in rec.get("data", {}).items():
        if key != "sources":
            assert getattr(p.data, key) == value
    assert p.train.mode == "full"
    assert p.train.seq_len == p.data.max_tokens  # every recipe trains on whole samples
    # untouched keys keep params.yaml's values
    assert p.train.lora == parse_params(raw).train.lora and p.eval == parse_params(raw).eval


def test_recipe_data_and_lengths_match_the_papers(raw):
    ps = {n: parse_params(dict(raw, recipe=n)) for n in PAPER_RECIPES}
    # Entropy-ABF: dialogues longer than the native window, up to 4x, responses only
    e = ps["entropy_abf"]
    assert e.data.max_tokens == 4 * NATIVE and e.data.embedded_min_fraction * e.data.max_tokens > NATIVE
    assert e.data.num_samples == 100 and e.data.sources[0].loss_tokens == "assistant"
    # CREAM chat: dialogues with loss on all tokens; base, PoSE, PI, YaRN: documents (loss on all tokens)
    assert ps["cream_chat"].data.sources[0].type == "embedded_chitchat"
    assert ps["cream_chat"].data.sources[0].loss_tokens == "all"
    for n in ("cream_base", "pose", "pi", "yarn"):
        assert ps[n].data.sources[0].type == "embedded_documents" and ps[n].data.sources[0].loss_tokens == "all"
    # CREAM and PoSE train in the native window; PI and YaRN at the target length
    for n in ("cream_chat", "cream_base", "pose"):
        assert ps[n].train.seq_len == NATIVE
    for n in ("pi", "yarn"):
        assert ps[n].train.seq_len == ps[n].target_length


def test_merge_is_recursive_and_lists_replace():
    base = {"a": 1, "lora": {"r": 8, "alpha": 16}, "sources": [{"type": "x"}, {"type": "y"}]}
    out = deep_merge(base, {"lora": {"r": 4}, "sources": [{"type": "z"}]})
    assert out == {"a": 1, "lora": {"r": 4, "alpha": 16}, "sources": [{"type": "z"}]}
    assert base["lora"]["r"] == 8  # inputs untouched


def test_recipe_errors_name_the_key(raw):
    with pytest.raises(ParamsError, match=r"recipe: unknown recipe 'cream'; defined in recipes: none, entropy_abf"):
        parse_params(dict(raw, recipe="cream"))
    bad = copy.deepcopy(raw)
    bad["recipes"]["pi"]["methods"] = {"pi": {}}
    with pytest.raises(ParamsError, match=r"recipes.pi.methods: a recipe sets only data and train"):
        parse_params(dict(bad, recipe="pi"))
    bad = copy.deepcopy(raw)
    bad["recipes"]["pi"]["train"]["stepz"] = 3
    with pytest.raises(ParamsError, match=r"train.stepz"):
        parse_params(dict(bad, recipe="pi"))
    assert apply_recipe({"data": {"x": 1}}) == {"data": {"x": 1}}  # no recipe keys at all: unchanged


def _losses(base, tmp_path, method, length, theta):
    ext = tmp_path / f"ext_{method}_{length}"
    # skip_layers 0: the tiny model has only two layers (the default would leave both unscaled)
    params = {"rope_theta": theta, **({"skip_layers": 0} if method == "entropy_abf" else {})}
    make_extended_model(base, ext, method, params, 256)
    sft = tmp_path / f"sft_{length}.jsonl"
    g = torch.Generator().manual_seed(0)
    with open(sft, "w") as f:
        for _ in range(3):
            ids = torch.randint(3, 128, (length,), generator=g).tolist()
            f.write(json.dumps({"input_ids": ids, "labels": ids, "seq_lens": [length]}) + "\n")
    tp = TrainParams(steps=3, mode="full", seq_len=length, lr=1e-3, scheduler="constant")
    losses = []
    finetune(ext, sft, tmp_path / f"ft_{method}_{length}", tp, dtype="float32",
             checkpoint_dir=tmp_path / f"ck_{method}_{length}", on_step=lambda s, loss: losses.append(loss))
    return losses


def test_entropy_abf_trains_differently_from_abf_only_past_the_window(base_dir, tmp_path):  # noqa: F811
    """The entropy factor max(1, log(i+1)/log(L)) (arXiv 2401.07004, Eq. 7) is 1 for i < L = the native
    window (64 for the tiny model): training inside the window is ABF's training bit for bit, training
    past it (as the entropy_abf recipe does, samples > native) gives different losses."""
    inside_e = _losses(base_dir, tmp_path, "entropy_abf", 64, 40000.0)
    inside_a = _losses(base_dir, tmp_path, "abf", 64, 40000.0)
    assert inside_e == inside_a
    past_e = _losses(base_dir, tmp_path, "entropy_abf", 192, 40000.0)
    past_a = _losses(base_dir, tmp_path, "abf", 192, 40000.0)
    # random-init attention is nearly uniform, so scaled logits move the loss only a little: ~1e-5
    assert all(abs(a - b) > 2e-6 for a, b in zip(past_e, past_a))
