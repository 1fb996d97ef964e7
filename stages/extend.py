"""Stage extend: apply `method` (with methods.<method>) to the base model, writing the extended model."""

from longctx.cli import stage_args
from longctx.modeling import load_model, make_extended_model
from longctx.params import stage_params

if __name__ == "__main__":
    args = stage_args(__doc__, {"base": "base model folder", "out": "extended model folder to write"})
    p = stage_params(model_dir=args.base)  # with the checks that need the model (native window, layers)
    ext = make_extended_model(args.base, args.out, p.method, p.method_params(), p.target_length,
                              p.model.native_window)
    # reload once: fails here if the method would not survive saving
    load_model(args.out, device="cpu", attn_implementation=p.model.attn_implementation)
    print(f"extend: {ext.method} {ext.params} -> rope {ext.rope_parameters}, attention {ext.attention}")
