"""Chat template + loss mask and the end-to-end ``prepare_sft_data`` on a local tokenizer.

No download: a tiny byte-level BPE tokenizer is trained here on the fixtures plus a few
chitchat messages, wrapped in ``PreTrainedTokenizerFast`` with SmolLM2-135M-Instruct's ChatML
chat template (which injects a default system prompt when there is none).
"""

import json
from itertools import accumulate
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from longctx.data import (
    IGNORE_INDEX,
    DataConfig,
    encode_conversation,
    normalize_messages,
    packed_attention_mask,
    plot_length_histogram,
    prepare_sft_data,
)
from longctx.data.chat import fit_to_length
from longctx.data.embedded import load_chitchat
from longctx.data.formats import load_conversations
from longctx.data.config import SourceConfig

FIX = Path(__file__).parent / "fixtures" / "data"

SMOLLM2_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [p.read_text() for p in sorted(FIX.glob("*.json*"))]
    corpus += [t for c in load_chitchat().conversations[:300] for _, t in c]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=SMOLLM2_CHATML,
    )


def labelled_runs(ids, labels):
    """Contiguous runs of labelled token ids."""
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


# ----------------------------------------------------------------------------- loss mask


@pytest.mark.parametrize(
    "name, type_", [("sharegpt.json", "sharegpt"), ("sharegpt.jsonl", "sharegpt"),
                    ("sharegpt_messages.jsonl", "sharegpt"), ("longalpaca.jsonl", "longalpaca")]
)
def test_labels_cover_exactly_the_assistant_replies(tokenizer, name, type_):
    for conv in load_conversations(SourceConfig(type=type_, path_or_id=str(FIX / name))):
        msgs = normalize_messages(conv)
        if msgs is None:
            continue
        enc = encode_conversation(tokenizer, msgs)
        # ids are exactly the tokenisation of the whole templated text
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        assert enc.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(enc.input_ids) == text
        runs = [tokenizer.decode(r) for r in labelled_runs(enc.input_ids, enc.labels)]
        assert runs == [m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant"]


def test_normalize_trims_leading_assistant_and_trailing_user():
    msgs = normalize_messages(
        [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"},
         {"role": "assistant", "content": "a"}, {"role": "user", "content": "bye"}]
    )
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert normalize_messages([{"role": "user", "content": "q"}]) is None


def test_truncate_at_last_whole_assistant_turn(tokenizer):
    msgs = [{"role": "user", "content": "one two three"}, {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "four five six " * 20}, {"role": "assistant", "content": "second answer"}]
    enc = encode_conversation(tokenizer, msgs)
    first_end = enc.turn_ends[1]
    (ids, labels), status = fit_to_length(enc, len(enc) - 1, 1, "truncate")
    assert status == "truncated" and len(ids) == first_end
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(msgs[:2], tokenize=False)
    assert fit_to_length(enc, len(enc) - 1, 1, "drop") == (None, "too_long")
    assert fit_to_length(enc, first_end - 1, 1, "truncate") == (None, "too_long")
    assert fit_to_length(enc, len(enc), len(enc) + 1, "drop") == (None, "too_short")


# ----------------------------------------------------------------------------- end to end


def file_cfg(**kw):
    cfg = {
        "seed": 0, "num_samples": 8, "max_tokens": 512, "min_tokens": 8,
        "sources": [
            {"type": "sharegpt", "path_or_id": str(FIX / "sharegpt.json"), "name": "sg_json"},
            {"type": "sharegpt", "path_or_id": str(FIX / "sharegpt.jsonl"), "name": "sg_jsonl"},
            {"type": "sharegpt", "path_or_id": str(FIX / "sharegpt_messages.jsonl"), "name": "sg_msgs"},
            {"type": "longalpaca", "path_or_id": str(FIX / "longalpaca.jsonl"), "name": "la"},
        ],
    }
    cfg.update(kw)
    return cfg


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prepare_files_unpacked(tokenizer, tmp_path):
    out = prepare_sft_data(file_cfg(), tokenizer, tmp_path)
    card = out["summary"]
    rows = read_rows(tmp_path / "train.jsonl")
    assert len(rows) == card["num_sequences"] == card["num_samples"]
    # quotas 2/2/2/2; sharegpt.jsonl has only 2 usable of 3 records (b3 has no answer)
    assert {k: v["count"] for k, v in card["sources"].items()} == {"sg_json": 2, "sg_jsonl": 2, "sg_msgs": 2, "la": 2}
    for row in rows:
        n = len(row["input_ids"])
        assert row["seq_lens"] == [n] and row["position_ids"] == list(range(n))
        assert len(row["labels"]) == n and row["labels"][0] == IGNORE_INDEX
        assert row["sample_sources"] == [row["source"]]
        assert any(x != IGNORE_INDEX for x in row["labels"])
    assert card["total_tokens"] == sum(len(r["input_ids"]) for r in rows)
    for stats in card["sources"].values():
        length = stats["length"]
        assert length["p10"] <= length["p50"] <= length["p90"] <= length["max"]
    json.dumps(out)  # serialisable for metrics/data.json
    assert sorted(out["lengths_by_source"]["la"]) == sorted(
        len(r["input_ids"]) for r in rows if r["source"] == "la"
    )
    assert not [p for p in tmp_path.iterdir() if p.name != "train.jsonl"]  # no temp file left


def test_prepare_packed_curriculum(tokenizer, tmp_path):
    card = prepare_sft_data(file_cfg(pack=True, curriculum="short_to_long", max_tokens=256), tokenizer, tmp_path)["summary"]
    rows = read_rows(tmp_path / "train.jsonl")
    assert card["num_samples"] == 8 and card["num_sequences"] == len(rows) < 8
    longest = [max(r["seq_lens"]) for r in rows]
    assert longest == sorted(longest)
    for row in rows:
        assert len(row["input_ids"]) == sum(row["seq_lens"]) <= 256
        assert len(row["sample_sources"]) == len(row["seq_lens"])
        bounds = [0, *accumulate(row["seq_lens"])]
        for a, b in zip(bounds, bounds[1:]):
            assert row["position_ids"][a:b] == list(range(b - a))  # restarts per sample
            assert row["labels"][a] == IGNORE_INDEX
            # every packed sample starts with the template's first token
            assert row["input_ids"][a] == tokenizer.convert_tokens_to_ids("<|im_start|>")
        mask = packed_attention_mask(row["seq_lens"])
        for a, b in zip(bounds, bounds[1:]):
            assert not mask[a:b, :a].any() and not mask[a:b, b:].any()


def test_same_seed_identical_different_seed_differs(tokenizer, tmp_path):
    cfg = file_cfg(num_samples=6, pack=True)
    prepare_sft_data(cfg, tokenizer, tmp_path / "a")
    prepare_sft_data(cfg, tokenizer, tmp_path / "b")
    prepare_sft_data({**cfg, "seed": 1}, tokenizer, tmp_path / "c")
    a, b, c = ((tmp_path / d / "train.jsonl").read_bytes() for d in "abc")
    assert a == b
    assert a != c


def test_embedded_end_to_end_deterministic(tokenizer, tmp_path):
    cfg = {"seed": 0, "num_samples": 3, "max_tokens": 2048, "embedded_questions": 3}
    card = prepare_sft_data(cfg, tokenizer, tmp_path / "a")["summary"]
    prepare_sft_data(cfg, tokenizer, tmp_path / "b")
    prepare_sft_data({**cfg, "seed": 5}, tokenizer, tmp_path / "c")
    a, b, c = ((tmp_path / d / "train.jsonl").read_bytes() for d in "abc")
    assert a == b and a != c
    stats = card["sources"]["embedded_chitchat"]
    assert stats["count"] == 3 and 512 <= stats["length"]["min"] and stats["length"]["max"] <= 2048
    for row in read_rows(tmp_path / "a" / "train.jsonl"):
        runs = [tokenizer.decode(r) for r in labelled_runs(row["input_ids"], row["labels"])]
        assert all(r.endswith("<|im_end|>") for r in runs)
        assert runs[0].startswith(("Got it", "Okay", "Thanks", "Understood", "Noted"))
        text = tokenizer.decode(row["input_ids"])
        assert "Here is conversation #1:" in text and "Now some questions" in text


def test_mixture_weights(tokenizer, tmp_path):
    cfg = {
        "num_samples": 4, "max_tokens": 1024,
        "sources": [
            {"type": "embedded_chitchat", "weight": 1},
            {"type": "sharegpt", "path_or_id": str(FIX / "sharegpt.json"), "weight": 3},
        ],
    }
    out = prepare_sft_data(cfg, tokenizer, tmp_path)
    card = out["summary"]
    assert card["sources"]["embedded_chitchat"]["requested"] == 1
    assert card["sources"]["sharegpt"]["requested"] == 3
    lengths = {}  # per-source sample lengths read back from train.jsonl
    for row in read_rows(tmp_path / "train.jsonl"):
        for src, n in zip(row["sample_sources"], row["seq_lens"]):
            lengths.setdefault(src, []).append(n)
    assert {k: len(v) for k, v in lengths.items()} == {"embedded_chitchat": 1, "sharegpt": 3}
    assert {k: sorted(v) for k, v in lengths.items()} == {k: sorted(v) for k, v in out["lengths_by_source"].items()}
    plot_length_histogram(lengths, tmp_path / "plots" / "lengths.png")
    assert (tmp_path / "plots" / "lengths.png").read_bytes()[:4] == b"\x89PNG"


def test_empty_after_filtering_raises_and_writes_nothing(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="no training samples"):
        prepare_sft_data(file_cfg(min_tokens=500), tokenizer, tmp_path)
    assert not (tmp_path / "train.jsonl").exists()


def test_malformed_source_error_names_file_and_line(tokenizer, tmp_path):
    cfg = {"sources": [{"type": "sharegpt", "path_or_id": str(FIX / "malformed.jsonl")}], "max_tokens": 256}
    with pytest.raises(ValueError, match=r"malformed\.jsonl:3"):
        prepare_sft_data(cfg, tokenizer, tmp_path)


def test_bad_config_key(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"data\.num_samples: must be in \[1, 1000000000\], got 0"):
        prepare_sft_data({"num_samples": 0}, tokenizer, tmp_path)
    assert DataConfig.from_dict({}).num_samples > 0
