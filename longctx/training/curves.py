"""dvclive training curves (loss, learning rate, tokens/s, peak memory), one row per optimizer step."""

from __future__ import annotations

import warnings
from pathlib import Path


def open_live(live_dir: Path):
    """dvclive logger for the training curves; training goes on without curves if it cannot start."""
    try:
        from dvclive import Live

        # dvcyaml=False: dvclive would otherwise rewrite the project's dvc.yaml.
        return Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    except Exception as e:  # no dvclive installed, or not inside a usable git/DVC repo
        warnings.warn(f"dvclive unavailable ({type(e).__name__}: {e}); training curves are not logged", stacklevel=2)
        return None
