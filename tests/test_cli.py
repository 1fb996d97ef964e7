"""Stage scripts' path arguments: required ones must be given, optional ones may be, all are Paths."""

from pathlib import Path

import pytest

from longctx.cli import stage_args


def test_stage_args_parse_paths():
    args = stage_args("d", {"model": "m", "out": "o"}, optional={"finetuned": "f"},
                      argv=["--out", "metrics/x.json", "--model", "models/base"])
    assert (args.model, args.out, args.finetuned) == (Path("models/base"), Path("metrics/x.json"), None)


@pytest.mark.parametrize("argv,named", [(["--model", "a"], "--out"),
                                        (["--model", "a", "--out", "b", "--bogus", "c"], "--bogus")])
def test_stage_args_refuse_missing_and_unknown(argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        stage_args("d", {"model": "m", "out": "o"}, argv=argv)
    assert e.value.code == 2
    assert named in capsys.readouterr().err
