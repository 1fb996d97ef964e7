"""Stage extend: apply `method` (with methods.<method>) to the base model, writing models/extended."""

from pathlib import Path

from longctx.modeling import load_model, make_extended_model
from longctx.params import stage_params

if __name__ == "__main__":
    p = stage_params()
    ext = make_extended_model(Path("models/base"), Path("models/extended"), p.method, p.method_params(),
                              p.target_length, p.model.native_window)
    load_model("models/extended", device="cpu")  # reload once: fails here if the method would not survive saving
    print(f"extend: {ext.method} {ext.params} -> rope {ext.rope_parameters}, attention {ext.attention}")
