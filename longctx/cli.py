"""Command-line arguments of the stage scripts: the paths a stage reads and writes.

Every path comes from the stage's `cmd` in dvc.yaml (`--name value`), so it is written in one place;
none has a default. Usage::

    args = stage_args(__doc__, {"model": "model folder", "out": "metrics file to write"},
                      optional={"finetuned": "fine-tuned weights on top of --model"})
    args.model  # a Path
"""

import argparse
from pathlib import Path


def stage_args(description: str, required: dict[str, str], optional: dict[str, str] | None = None,
               argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `--name PATH` options: each key of `required` must be given, each of `optional` may be
    (None when absent); the dict values are the help texts. A missing or unknown option ends the
    script with argparse's usage message and exit code 2."""
    ap = argparse.ArgumentParser(description=description)
    for name, help_text in required.items():
        ap.add_argument(f"--{name}", type=Path, required=True, help=help_text)
    for name, help_text in (optional or {}).items():
        ap.add_argument(f"--{name}", type=Path, help=help_text)
    return ap.parse_args(argv)
