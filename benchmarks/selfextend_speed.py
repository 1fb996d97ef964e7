"""Time and peak memory of one long forward: SelfExtend against plain SDPA with no extension.

Usage: python benchmarks/selfextend_speed.py --lengths 32768,65536   (needs models/base; a GPU for real numbers)
"""

import argparse
import time

import torch

from longctx.attention import apply_attention
from longctx.methods import selfextend_group_size
from longctx.modeling import load_model


def timed_forward(model, ids, repeats=3):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.inference_mode():
        model(input_ids=ids, logits_to_keep=1)  # warm-up (and compilation for FlexAttention)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=ids, logits_to_keep=1)
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats, (torch.cuda.max_memory_allocated() - base) / 2**30


def check_flex_against_blockwise(model, n=4096, group=4, window=1024):
    """The CUDA FlexAttention path against the general block path (run on the CPU), on random inputs."""
    from longctx.selfextend import selfextend_attention

    attn = model.model.layers[0].self_attn
    cfg = attn.config
    old = getattr(cfg, "longctx_extension", None)
    cfg.longctx_extension = {"group_size": group, "window": window, "scale_base": 0}
    g = torch.Generator(device="cuda").manual_seed(0)
    h, hk, d = cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim
    q = torch.randn(1, h, n, d, device="cuda", generator=g, dtype=torch.bfloat16)
    k = torch.randn(1, hk, n, d, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn(1, hk, n, d, device="cuda", generator=g, dtype=torch.bfloat16)
    pos = torch.arange(n, device="cuda")[None]
    gpu, _ = selfextend_attention(attn, q, k, v, None, attn.scaling, position_ids=pos)
    cpu, _ = selfextend_attention(attn, q.float().cpu(), k.float().cpu(), v.float().cpu(), None, attn.scaling,
                                  position_ids=pos.cpu())
    err = (gpu.float().cpu() - cpu).abs().max().item()
    print(f"flex (CUDA, bf16) vs block path (CPU, fp32) at {n} tokens, G={group}, W={window}: max abs diff {err:.4f}")
    if old is None:
        del cfg.longctx_extension
    else:
        cfg.longctx_extension = old
    return err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="32768,65536")
    ap.add_argument("--window", type=int, default=1024)
    args = ap.parse_args()
    model = load_model("models/base")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, dtype {model.dtype}")
    check_flex_against_blockwise(model)
    print("| length | sdpa s | sdpa GiB | selfextend s | selfextend GiB | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for n in map(int, args.lengths.split(",")):
        ids = torch.randint(100, 40000, (1, n), device="cuda")
        apply_attention(model, None)
        t_sdpa, m_sdpa = timed_forward(model, ids)
        group = selfextend_group_size(8192, args.window, n)
        apply_attention(model, {"method": "selfextend", "group_size": group, "window": args.window, "scale_base": 0})
        t_se, m_se = timed_forward(model, ids)
        print(f"| {n} | {t_sdpa:.3f} | {m_sdpa:.2f} | {t_se:.3f} | {m_se:.2f} | {t_se / t_sdpa:.2f} | {m_se / m_sdpa:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
