"""LongBench: loading in its JSONL format, prompts, and the official metrics against numbers
computed by hand (fixtures: tests/fixtures/longbench/<task>.jsonl, 2-3 records per family)."""

from pathlib import Path

import pytest

from longctx.evaluation import longbench as lb

FIXTURES = Path(__file__).parent / "fixtures" / "longbench"
REQUIRED = ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "gov_report",
            "qmsum", "multi_news", "trec", "triviaqa", "samsum", "passage_count", "passage_retrieval_en",
            "lcc", "repobench-p"]


@pytest.fixture(scope="module")
def tokenizer():
    from test_eval_tasks import build_tokenizer  # tests/ is on sys.path (pytest rootdir import)

    return build_tokenizer(600)


def test_every_task_has_prompt_maxlen_metric():
    for t in REQUIRED:
        assert "{context}" in lb.DATASET2PROMPT[t]
        assert lb.DATASET2MAXLEN[t] in (32, 64, 128, 512)
        assert t in lb.DATASET2METRIC
    assert lb.DATASET2METRIC["trec"] is lb.classification_score
    assert lb.DATASET2METRIC["samsum"] is lb.rouge_score
    assert lb.DATASET2METRIC["repobench-p"] is lb.code_sim_score
    assert lb.DATASET2MAXLEN["gov_report"] == 512 and lb.DATASET2MAXLEN["hotpotqa"] == 32


# ----------------------------------------------------------------------------- metrics by hand


def test_qa_f1_by_hand():
    # "the cat sat" -> "cat sat" (article dropped); vs "cat sat down": 2 common tokens,
    # precision 2/2, recall 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    assert lb.qa_f1_score("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert lb.normalize_answer("The  Cat, sat!") == "cat sat"
    assert lb.qa_f1_score("Paris, France", "Paris") == pytest.approx(2 / 3)  # P 1/2, R 1
    assert lb.qa_f1_score("dog", "cat") == 0.0


def test_rouge_l_by_hand():
    # One sentence each. Distinct words: hyp {the cat sat on mat} n=5, ref {the cat lay on mat}
    # m=5. LCS = "the cat on the mat" whose *set* is {the cat on mat} = 4 (rouge 1.0.1 counts
    # distinct words). R = P = 4/5 -> F = 0.8 (a multiset ROUGE-L would give 5/6).
    assert lb.rouge_score("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(0.8, abs=1e-6)
    # Summary level: hyp sentences "x y" and "z w"; ref "x z w". LCS with each: {x}, {z, w};
    # union 3 words. R = 3/3, P = 3/4 -> F = 2 * 0.75 / 1.75 = 6/7.
    assert lb.rouge_score("x y. z w", "x z w") == pytest.approx(6 / 7, abs=1e-6)
    assert lb.rouge_score("same words here", "same words here") == pytest.approx(1.0, abs=1e-6)
    assert lb.rouge_score("", "reference") == 0.0  # the rouge package raises; LongBench returns 0
    assert lb.rouge_score(".", "reference") == 0.0


def test_classification_retrieval_count_code_by_hand():
    classes = ["Abbreviation", "Other number", "number", "Location", "Human"]
    assert lb.classification_score("Location", "Location", all_classes=classes) == 1.0
    assert lb.classification_score("Human or Location", "Location", all_classes=classes) == 0.5
    # "number" is inside the ground truth "Other number" and is dropped: 1/1, not 1/2
    assert lb.classification_score("Other number", "Other number", all_classes=classes) == 1.0
    assert lb.classification_score("number", "Other number", all_classes=classes) == 0.0
    assert lb.classification_score("no idea", "Location", all_classes=classes) == 0.0  # no fallback
    assert lb.retrieval_score("Paragraph 2", "Paragraph 2") == 1.0
    assert lb.retrieval_score("Paragraph 1, not Paragraph 2", "Paragraph 2") == 0.5
    assert lb.retrieval_score("none", "Paragraph 2") == 0.0
    assert lb.count_score("There are 2 unique paragraphs out of 3", "2") == 0.5
    assert lb.count_score("2", 2) == 1.0
    # difflib ratio 2*M/T: abcd/abce M=3, T=8 -> 75; kitten/sitting M=4 ("itt", "n"), T=13 -> 61.5 -> 62
    assert lb.fuzz_ratio("abcd", "abce") == 75
    assert lb.fuzz_ratio("kitten", "sitting") == 62
    assert lb.fuzz_ratio("", "") == 100 and lb.fuzz_ratio("a", "") == 0
    assert lb.code_sim_score("```python\n    return x + 1\n```", "    return x + 1") == 1.0
    assert lb.code_sim_score("# a comment\nsitting", "kitten") == pytest.approx(0.62)


# ----------------------------------------------------------------------------- whole tasks


PREDICTIONS = {
    # 0.8 (best of the two answers) and 2/3 -> 100 * (0.8 + 0.6667) / 2
    "hotpotqa": (["The cat sat.", "Paris, France"], 73.33),
    # 0.8 and 6/7 (see test_rouge_l_by_hand) -> 82.86
    "gov_report": (["the cat sat on the mat", "x y. z w"], 82.86),
    # first line "Location" -> 1; "Other number" -> 1; "Human or Location" -> 1/2 -> 83.33
    "trec": (["Location\nHuman", "Other number", "Human or Location"], 83.33),
    "passage_retrieval_en": (["Paragraph 2", "Paragraph 1, not Paragraph 2"], 75.0),
    "passage_count": (["2", "There are 2 unique paragraphs out of 3"], 75.0),
    # 1.0 and 0.62 -> 81.0
    "lcc": (["```python\n    return x + 1\n```", "# comment\nsitting"], 81.0),
    # first line "Blue" -> 1.0 against "blue"; "white snow" vs "white" -> 2/3 -> 83.33
    "triviaqa": (["Blue\nQuestion: What colour is grass?", "white snow"], 83.33),
}


@pytest.mark.parametrize("task", sorted(PREDICTIONS))
def test_score_fixture_tasks(task):
    records = lb.load_longbench(task, FIXTURES)
    preds, expected = PREDICTIONS[task]
    assert len(records) == len(preds)
    answers = [r["answers"] for r in records]
    assert lb.score_longbench(task, preds, answers, records[0]["all_classes"]) == expected
    # oracle: the first reference answer scores 100 on every task family
    assert lb.score_longbench(task, [a[0] for a in answers], answers, records[0]["all_classes"]) == 100.0


def test_first_line_rule_only_for_few_shot_tasks():
    # trec is cut to its first line; hotpotqa is not
    assert lb.score_longbench("triviaqa", ["blue\nred"], [["blue"]], None) == 100.0
    assert lb.score_longbench("hotpotqa", ["blue\nred"], [["blue"]], None) == pytest.approx(66.67)


def test_loader_file_dir_and_validation(tmp_path):
    by_dir = lb.load_longbench("trec", FIXTURES)
    by_file = lb.load_longbench("trec", FIXTURES / "trec.jsonl", limit=2)
    assert by_file == by_dir[:2] and set(lb.FIELDS) <= set(by_dir[0])
    bad = tmp_path / "trec.jsonl"
    bad.write_text('{"input": "q", "context": "c"}\n')
    with pytest.raises(ValueError):
        lb.load_longbench("trec", bad)
    with pytest.raises(KeyError):
        lb.load_longbench("not_a_task", FIXTURES)


def test_loader_uses_the_hub_path(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split, revision):
        calls.append((path, name, split, revision))
        return [dict(r) for r in lb.load_longbench("hotpotqa", FIXTURES)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = lb.load_longbench("hotpotqa")
    assert calls == [("THUDM/LongBench", "hotpotqa", "test", lb.LONGBENCH_REVISION)]
    assert len(records) == 2


def test_middle_truncation():
    assert lb.middle_truncate(list(range(10)), 6) == [0, 1, 2, 7, 8, 9]
    assert lb.middle_truncate(list(range(10)), 7) == [0, 1, 2, 7, 8, 9]  # int(7 / 2) = 3 each side
    assert lb.middle_truncate(list(range(5)), 6) == [0, 1, 2, 3, 4]


def test_prompts(tokenizer):
    records = lb.load_longbench("hotpotqa", FIXTURES)
    full = lb.longbench_prompts(records, "hotpotqa", tokenizer, 10_000, use_chat_template=True)
    assert full[0]["max_new_tokens"] == 32 and full[0]["answers"] == records[0]["answers"]
    text = tokenizer.decode(full[0]["prompt_ids"])
    assert text.startswith("<|im_start|>user\nAnswer the question based on the given passages.")
    assert "Passage 1:\nThe cat sat on the mat in Paris." in text
    assert text.endswith("Question: Where did the cat sit?\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    assert not full[0]["truncated"]

    body = tokenizer(lb.DATASET2PROMPT["hotpotqa"].format(**records[0]), add_special_tokens=False).input_ids
    cut = lb.longbench_prompts(records, "hotpotqa", tokenizer, 20, use_chat_template=False)[0]
    assert cut["truncated"] and cut["prompt_ids"] == [tokenizer.bos_token_id] + body[:10] + body[-10:]

    # few-shot and code tasks never get the chat template (LongBench pred.py)
    trec = lb.longbench_prompts(lb.load_longbench("trec", FIXTURES), "trec", tokenizer, 10_000, True)
    assert trec[0]["prompt_ids"][0] == tokenizer.bos_token_id
    assert "<|im_start|>" not in tokenizer.decode(trec[0]["prompt_ids"])
    assert trec[0]["all_classes"][0] == "Abbreviation" and trec[0]["max_new_tokens"] == 64
