"""DataConfig validation: defaults are valid, every bad key is named in the error."""

from pathlib import Path

import pytest
import yaml

from longctx.data.config import DataConfig

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid_and_match_shipped_params():
    cfg = DataConfig.from_dict({})
    assert cfg.sources[0].type == "embedded_chitchat"
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]
    assert DataConfig.from_dict(shipped) == cfg  # one set of defaults: the dataclass, shown in params.yaml


def test_round_trip():
    d = {"seed": 3, "pack": True, "sources": [{"type": "sharegpt", "path_or_id": "org/x", "weight": 2}]}
    cfg = DataConfig.from_dict(d)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "d, key",
    [
        ({"num_samples": 0}, "data.num_samples: must be in [1, 1000000000], got 0"),
        ({"max_tokens": -5}, "data.max_tokens"),
        ({"min_tokens": 100, "max_tokens": 50}, "data.min_tokens"),
        ({"overlong": "cut"}, "data.overlong"),
        ({"curriculum": "random"}, "data.curriculum"),
        ({"pack": "yes"}, "data.pack"),
        ({"seed": 1.5}, "data.seed"),
        ({"embedded_max_fraction": 1.5}, "data.embedded_max_fraction"),
        ({"embedded_questions": 0}, "data.embedded_questions"),
        ({"num_sample": 10}, "data.num_sample: unknown key; did you mean 'num_samples'?"),
        ({"sources": []}, "data.sources"),
        ({"sources": [{"type": "alpaca", "path_or_id": "x"}]}, "data.sources[0].type"),
        ({"sources": [{"type": "sharegpt"}]}, "data.sources[0].path_or_id"),
        ({"sources": [{"type": "embedded_chitchat", "weight": -1}]}, "data.sources[0].weight"),
        ({"sources": [{"type": "embedded_chitchat", "wieght": 1}]}, "data.sources[0].wieght"),
        ({"sources": [{"type": "embedded_chitchat", "weight": 0}]}, "data.sources"),
        (
            {"sources": [{"type": "sharegpt", "path_or_id": "org/a"}, {"type": "sharegpt", "path_or_id": "org/b"}]},
            "data.sources[1].name",
        ),
    ],
)
def test_bad_values_name_the_key(d, key):
    with pytest.raises(ValueError) as e:
        DataConfig.from_dict(d)
    assert key in str(e.value)
