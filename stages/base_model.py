"""Stage base_model: materialise model.name_or_path into a folder (safetensors + tokenizer + native.json)."""

from longctx.base_model import materialize_base_model
from longctx.cli import stage_args
from longctx.params import stage_check, stage_params
from longctx.sources import check_local_or_hub

if __name__ == "__main__":
    args = stage_args(__doc__, {"out": "model folder to write"})
    p = stage_params()
    if p.model.name_or_path != "embedded" and not p.model.name_or_path.startswith("shape:"):
        stage_check(check_local_or_hub, p.model.name_or_path, "model.name_or_path")  # seconds, not a minute of retries
    record = materialize_base_model(p.model.name_or_path, args.out, p.model.revision, p.model.trust_remote_code)
    print(f"base model: {record['architecture']}, native window {record['native_window']}, "
          f"rope {record['rope_parameters']}")
