"""Stage base_model: materialise model.name_or_path into models/base (safetensors + tokenizer + native.json)."""

from pathlib import Path

from longctx.base_model import materialize_base_model
from longctx.params import stage_params

if __name__ == "__main__":
    p = stage_params()
    record = materialize_base_model(p.model.name_or_path, Path("models/base"), p.model.revision,
                                    p.model.trust_remote_code)
    print(f"base model: {record['architecture']}, native window {record['native_window']}, "
          f"rope {record['rope_parameters']}")
