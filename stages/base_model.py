"""Stage base_model: materialise model.name_or_path into a folder (safetensors + tokenizer + native.json)."""

import argparse
from pathlib import Path

from longctx.base_model import materialize_base_model
from longctx.params import stage_params

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="model folder to write (models/base)")
    args = ap.parse_args()
    p = stage_params()
    record = materialize_base_model(p.model.name_or_path, args.out, p.model.revision, p.model.trust_remote_code)
    print(f"base model: {record['architecture']}, native window {record['native_window']}, "
          f"rope {record['rope_parameters']}")
