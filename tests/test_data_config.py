"""DataConfig validation: defaults are valid, every bad key is named in the error."""

import pytest

from longctx.data.config import DEFAULT_YAML, DataConfig


def test_defaults_are_valid_and_match_yaml():
    yaml = pytest.importorskip("yaml")
    cfg = DataConfig.from_dict({})
    assert cfg.sources[0].type == "embedded_chitchat"
    from_yaml = DataConfig.from_dict(yaml.safe_load(DEFAULT_YAML)["data"])
    assert from_yaml == cfg


def test_round_trip():
    d = {"seed": 3, "pack": True, "sources": [{"type": "sharegpt", "path_or_id": "x.jsonl", "weight": 2}]}
    cfg = DataConfig.from_dict(d)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "d, key",
    [
        ({"num_samples": 0}, "data.num_samples must be > 0, got 0"),
        ({"max_tokens": -5}, "data.max_tokens"),
        ({"min_tokens": 100, "max_tokens": 50}, "data.min_tokens"),
        ({"overlong": "cut"}, "data.overlong"),
        ({"curriculum": "random"}, "data.curriculum"),
        ({"pack": "yes"}, "data.pack"),
        ({"seed": 1.5}, "data.seed"),
        ({"embedded_max_fraction": 1.5}, "data.embedded_max_fraction"),
        ({"embedded_questions": 0}, "data.embedded_questions"),
        ({"num_sample": 10}, "data.num_sample is not a known key"),
        ({"sources": []}, "data.sources"),
        ({"sources": [{"type": "alpaca", "path_or_id": "x"}]}, "data.sources[0].type"),
        ({"sources": [{"type": "sharegpt"}]}, "data.sources[0].path_or_id"),
        ({"sources": [{"type": "embedded_chitchat", "weight": -1}]}, "data.sources[0].weight"),
        ({"sources": [{"type": "embedded_chitchat", "wieght": 1}]}, "data.sources[0].wieght"),
        ({"sources": [{"type": "embedded_chitchat", "weight": 0}]}, "data.sources"),
        (
            {"sources": [{"type": "sharegpt", "path_or_id": "a"}, {"type": "sharegpt", "path_or_id": "b"}]},
            "data.sources[1].name",
        ),
    ],
)
def test_bad_values_name_the_key(d, key):
    with pytest.raises(ValueError) as e:
        DataConfig.from_dict(d)
    assert key in str(e.value)
