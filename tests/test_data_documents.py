"""Document (language-modelling) sources, ``loss_on: assistant | all``, the loss-token share in the
data card, and that training text never overlaps the evaluation text."""

import json
import re
from pathlib import Path

import pytest

from longctx.data import IGNORE_INDEX, DataConfig, prepare_sft_data
from longctx.data.config import SourceConfig
from longctx.data.documents import document_chunks, iter_documents
from longctx.data.embedded import format_passage, load_chitchat

from tests.test_data_prepare import FIX, labelled_runs, tokenizer  # noqa: F401  (the shared tiny tokenizer)


def _rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "train.jsonl").read_text().splitlines()]


def _write_docs(tmp_path: Path) -> list[str]:
    docs = [" ".join(f"Document {d} sentence {i} is about topic {d * 7 + i}." for i in range(60)) for d in range(3)]
    (tmp_path / "docs").mkdir()
    for d, text in enumerate(docs):
        (tmp_path / "docs" / f"{d}.txt").write_text(text)
    with open(tmp_path / "docs.jsonl", "w") as f:
        for text in docs:
            f.write(json.dumps({"text": text, "meta": "x"}) + "\n")
    return docs


def test_document_chunks_are_consecutive_windows():
    ids = list(range(25))
    assert document_chunks(ids, 10, 4) == [ids[:10], ids[10:20], ids[20:]]
    assert document_chunks(ids, 10, 6) == [ids[:10], ids[10:20]]  # tail of 5 < min_tokens


@pytest.mark.parametrize("where", ["docs", "docs.jsonl", "docs/1.txt"])
def test_document_source_loss_on_every_token(tokenizer, tmp_path, where):  # noqa: F811
    docs = _write_docs(tmp_path)
    cfg = {"num_samples": 4, "max_tokens": 64, "min_tokens": 8,
           "sources": [{"type": "documents", "path_or_id": str(tmp_path / where)}]}
    card = prepare_sft_data(cfg, tokenizer, tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert len(rows) == 4
    texts = docs if where != "docs/1.txt" else [docs[1]]
    for r in rows:
        assert len(r["input_ids"]) <= 64
        # every token but the first (never a target) is its own label: loss on all tokens
        assert r["labels"][0] == IGNORE_INDEX and r["labels"][1:] == r["input_ids"][1:]
        piece = tokenizer.decode(r["input_ids"], skip_special_tokens=True)
        assert any(piece.strip()[:30] in t for t in texts)  # a real window of one of the documents
    s = card["summary"]
    assert s["sources"]["documents"]["loss_on"] == "all"
    assert s["loss_token_share"] == pytest.approx((s["total_tokens"] - s["num_samples"]) / s["total_tokens"], abs=1e-4)
    assert s["loss_token_share"] > 0.9


def test_consecutive_chunks_of_one_long_document(tokenizer, tmp_path):  # noqa: F811
    docs = _write_docs(tmp_path)
    cfg = {"num_samples": 3, "max_tokens": 32, "min_tokens": 8, "curriculum": "short_to_long",
           "sources": [{"type": "documents", "path_or_id": str(tmp_path / "docs" / "2.txt")}]}
    prepare_sft_data(cfg, tokenizer, tmp_path / "out")
    ids = [i for r in _rows(tmp_path / "out") for i in r["input_ids"]]
    whole = tokenizer(docs[2], add_special_tokens=False)["input_ids"]
    assert sorted(ids) == sorted(whole[:96])  # the first three windows, nothing skipped or repeated


def test_document_errors_name_the_problem(tokenizer, tmp_path):  # noqa: F811
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    cfg = {"num_samples": 1, "sources": [{"type": "documents", "path_or_id": str(tmp_path / "bad.jsonl")}]}
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string 'text' field"):
        prepare_sft_data(cfg, tokenizer, tmp_path / "out")
    with pytest.raises(ValueError, match=r"data.sources\[0\].path_or_id: required"):
        DataConfig.from_dict({"sources": [{"type": "documents"}]})
    with pytest.raises(ValueError, match=r"data.sources\[0\].loss_on: documents sources have no assistant"):
        DataConfig.from_dict({"sources": [{"type": "documents", "path_or_id": "x.txt", "loss_on": "assistant"}]})
    with pytest.raises(ValueError, match=r"data.sources\[0\].loss_on: 'some' is not allowed; allowed: assistant, all"):
        DataConfig.from_dict({"sources": [{"type": "sharegpt", "path_or_id": "x.json", "loss_on": "some"}]})


def test_hub_document_source_goes_through_datasets(tokenizer, tmp_path, monkeypatch):  # noqa: F811
    """A hub id is read with ``datasets.load_dataset(id, split=, revision=)`` (here a stand-in)."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, split, revision):
        calls.append((path, split, revision))
        return datasets.Dataset.from_dict({"text": ["alpha beta gamma delta " * 40], "id": [0]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = {"num_samples": 2, "max_tokens": 32, "min_tokens": 8,
           "sources": [{"type": "documents", "path_or_id": "emozilla/pg19", "split": "test", "revision": "abc"}]}
    card = prepare_sft_data(cfg, tokenizer, tmp_path / "out")
    assert calls == [("emozilla/pg19", "test", "abc")]
    assert card["summary"]["num_samples"] == 2


@pytest.mark.parametrize("loss_on", ["assistant", "all"])
def test_dialogue_loss_on(tokenizer, tmp_path, loss_on):  # noqa: F811
    cfg = {"num_samples": 3, "max_tokens": 4096, "pack": False,
           "sources": [{"type": "sharegpt", "path_or_id": str(FIX / "sharegpt.jsonl"), "loss_on": loss_on}]}
    card = prepare_sft_data(cfg, tokenizer, tmp_path / "out")
    rows = _rows(tmp_path / "out")
    for r in rows:
        if loss_on == "all":
            assert r["labels"][1:] == r["input_ids"][1:]
        else:  # only the assistant replies: every labelled run ends with <|im_end|>, user text is masked
            runs = labelled_runs(r["input_ids"], r["labels"])
            assert runs and all(run[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") for run in runs)
            assert sum(x != IGNORE_INDEX for x in r["labels"]) < len(r["labels"]) - 5
    s = card["summary"]
    assert s["loss_token_share"] == round(s["label_tokens"] / s["total_tokens"], 4)
    assert (s["loss_token_share"] > 0.95) == (loss_on == "all")


def test_embedded_documents_offline_and_deterministic(tokenizer, tmp_path):  # noqa: F811
    cfg = {"num_samples": 3, "max_tokens": 256, "sources": [{"type": "embedded_documents"}]}
    a = prepare_sft_data(cfg, tokenizer, tmp_path / "a")
    prepare_sft_data(cfg, tokenizer, tmp_path / "b")
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    assert [len(r["input_ids"]) for r in _rows(tmp_path / "a")] == [256] * 3
    assert a["summary"]["sources"]["embedded_documents"]["loss_on"] == "all"
    first = next(iter_documents(SourceConfig(type="embedded_documents"), seed=0))
    assert first.count("\n\n") >= 10 and re.match(r"[AB]: ", first)  # many real conversations, transcript form


def _shingles(text: str, n: int) -> set[int]:
    words = re.findall(r"\w+", text.lower())
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


def test_train_and_eval_texts_are_disjoint():
    """No 12-word sequence of the evaluation texts (haystack filler, perplexity text: pydoc topics)
    occurs in the offline training documents (all chitchat conversations) or the embedded SFT data."""
    from longctx.evaluation.filler import corpus_text
    from longctx.evaluation.perplexity import long_text as perplexity_text

    n = 12
    eval_shingles = _shingles(corpus_text(), n) | _shingles(perplexity_text(), n)
    assert len(eval_shingles) > 50_000
    corpus = load_chitchat()
    shared = set()
    for conv in corpus.conversations:
        shared |= _shingles(format_passage(conv), n) & eval_shingles
    assert not shared
