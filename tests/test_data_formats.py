"""ShareGPT / LongAlpaca readers on the committed fixtures, and their error messages."""

from pathlib import Path

import pytest

from longctx.data.config import SourceConfig
from longctx.data.formats import load_conversations

FIX = Path(__file__).parent / "fixtures" / "data"


def load(type_, name):
    return load_conversations(SourceConfig(type=type_, path_or_id=str(FIX / name)))


def test_sharegpt_json_list():
    convs = load("sharegpt", "sharegpt.json")
    assert len(convs) == 3
    assert [m["role"] for m in convs[0]] == ["system", "user", "assistant", "user", "assistant"]
    assert convs[0][2] == {"role": "assistant", "content": "The capital of France is Paris."}
    assert convs[2][0]["role"] == "assistant"  # kept here; normalize_messages trims it later


def test_sharegpt_jsonl_skips_blank_lines():
    convs = load("sharegpt", "sharegpt.jsonl")
    assert len(convs) == 3
    assert convs[1][3] == {"role": "assistant", "content": "Guten Morgen."}


def test_messages_variant():
    convs = load("sharegpt", "sharegpt_messages.jsonl")
    assert convs[0] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What do bees make?"},
        {"role": "assistant", "content": "Honey."},
    ]


def test_longalpaca():
    convs = load("longalpaca", "longalpaca.jsonl")
    assert convs[0][0]["role"] == "user"
    assert convs[0][0]["content"].startswith("Summarize the following story in one sentence.\n\nOnce upon")
    assert convs[0][1]["content"].startswith("A fox finds")
    # missing "input": the user turn is the instruction alone
    assert convs[1][0]["content"].endswith("morning.")


def test_malformed_line_reports_file_and_line():
    with pytest.raises(ValueError) as e:
        load("sharegpt", "malformed.jsonl")
    msg = str(e.value)
    assert "malformed.jsonl:3" in msg and "invalid JSON" in msg


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"conversations": []}', "empty conversation"),
        ('{"conversation": [{"from": "human", "value": "x"}]}', "missing key 'conversations'"),
        ('{"conversations": [{"from": "robot", "value": "x"}]}', "unknown role 'robot'"),
        ('{"conversations": [{"from": "human"}]}', "missing key 'value'"),
        ('{"conversations": [{"from": "human", "value": 3}]}', "must be a string"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}', "system"),
        ('[1, 2]', "expected a JSON object"),
    ],
)
def test_schema_errors(tmp_path, line, problem):
    good = '{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}'
    path = tmp_path / "bad_records.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError) as e:
        load("sharegpt", path)
    assert f"bad_records.jsonl:2" in str(e.value) and problem in str(e.value)


def test_longalpaca_errors(tmp_path):
    path = tmp_path / "la.jsonl"
    path.write_text('{"instruction": "Do it"}\n')
    with pytest.raises(ValueError, match=r"la\.jsonl:1: missing key 'output'"):
        load("longalpaca", path)


def test_json_list_reports_record_index(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('[{"conversations": [{"from": "human", "value": "a"}]}, {"conversations": 5}]')
    with pytest.raises(ValueError, match=r"list\.json: record index 1: 'conversations' must be a list"):
        load("sharegpt", path)


def test_missing_local_file_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(ValueError, match="local file not found"):
        load("sharegpt", tmp_path / "nope.jsonl")


def test_hub_ids_go_through_load_dataset(monkeypatch):
    """The hub code path calls datasets.load_dataset(id, split=, revision=); faked here (no network)."""
    import datasets

    calls = []

    def fake_load_dataset(path, split=None, revision=None):
        calls.append((path, split, revision))
        return [{"instruction": "Say hi", "input": "", "output": "hi"}, {"instruction": "x"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = SourceConfig(type="longalpaca", path_or_id="someone/long-data", split="train[:10]", revision="abc123")
    with pytest.raises(ValueError, match=r"someone/long-data \(train\[:10\]\): record index 1: missing key 'output'"):
        load_conversations(src)
    assert calls == [("someone/long-data", "train[:10]", "abc123")]
