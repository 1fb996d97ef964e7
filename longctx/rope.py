"""RoPE frequency methods, one function each, formulas written out.

Every function returns ``(inv_freq, attention_scaling)`` for a rotary head of size ``dim``:
``inv_freq[i]`` is the angular speed of pair ``i`` (RoPE rotates pair i of a token at position
p by ``p * inv_freq[i]``) and ``attention_scaling`` multiplies cos/sin (so logits by its square).

These are our own derivations from the papers. transformers implements several of the same
methods natively; ``longctx.methods`` writes those into ``config.rope_parameters`` so a saved
model reloads with plain ``from_pretrained``, and ``longctx.modeling.verify_rope`` checks after
every load that the frequencies transformers computes equal the ones computed here.
"""

from __future__ import annotations

import math

import torch


def rotary_dim(head_dim: int, partial_rotary_factor: float = 1.0) -> int:
    """Channels of a head that RoPE rotates: all of them, or the first ``head_dim * partial_rotary_factor``
    (partial rotary, Phi-3 / GPT-NeoX; the rest carry no position). Every function below takes this ``dim``."""
    return int(head_dim * partial_rotary_factor)


def default_inv_freq(dim: int, base: float, device=None) -> torch.Tensor:
    """Original RoPE (Su et al. 2021, arXiv 2104.09864, Eq. 15): theta_i = base^(-2i/d).

    ``device``: build it there (an attention function on the GPU then needs no host-to-device copy, which
    would synchronise the host with the GPU in every layer)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))


def pi_inv_freq(dim: int, base: float, factor: float) -> tuple[torch.Tensor, float]:
    """Position Interpolation (Chen et al. 2023, arXiv 2306.15595, Eq. 4).

    Positions are squeezed by the factor s = L'/L: f'(x, m) = f(x, m L / L'), which is the same
    as dividing every frequency by s.
    """
    return default_inv_freq(dim, base) / factor, 1.0


def ntk_base(base: float, factor: float, dim: int) -> float:
    """Static NTK-aware base (bloc97 2023; YaRN paper arXiv 2309.00071, Eq. 16): b' = b * s^(|D| / (|D| - 2)).

    The base is raised so the lowest frequency is interpolated by s while the highest is kept.
    """
    return float(base) * factor ** (dim / (dim - 2))


def ntk_inv_freq(dim: int, base: float, factor: float) -> tuple[torch.Tensor, float]:
    """Static NTK-aware scaling: plain RoPE with the base :func:`ntk_base`."""
    return default_inv_freq(dim, ntk_base(base, factor, dim)), 1.0


def dynamic_ntk_inv_freq(dim: int, base: float, factor: float, native: int, seq_len: int) -> tuple[torch.Tensor, float]:
    """Dynamic NTK (emozilla 2023; YaRN paper Sec. 3.3): NTK with a scale that grows with length.

    b' = b * (s * l / L - (s - 1))^(|D| / (|D| - 2)) for the current length l > L, plain RoPE for
    l <= L. transformers scales against ``max_position_embeddings``, so that field must stay at
    the native window L for this method.
    """
    seq_len = max(seq_len, native)
    return default_inv_freq(dim, base * (factor * seq_len / native - (factor - 1)) ** (dim / (dim - 2))), 1.0


def yarn_attention_factor(factor: float, mscale: float | None = None, mscale_all_dim: float | None = None) -> float:
    """YaRN temperature (arXiv 2309.00071, Eq. 22): sqrt(1/t) = 0.1 ln(s) + 1.

    DeepSeek-style configs give ``mscale`` and ``mscale_all_dim``; the factor is then the ratio
    (0.1 mscale ln(s) + 1) / (0.1 mscale_all_dim ln(s) + 1).
    """
    def m(scale: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * scale * math.log(factor) + 1.0

    if mscale and mscale_all_dim:
        return m(mscale) / m(mscale_all_dim)
    return m(1.0)


def yarn_inv_freq(
    dim: int, base: float, factor: float, native: int, beta_fast: float = 32.0, beta_slow: float = 1.0,
    truncate: bool = True,
) -> tuple[torch.Tensor, float]:
    """YaRN "NTK-by-parts" frequencies plus attention temperature (arXiv 2309.00071, Eqs. 17-23).

    For each pair the number of full rotations inside the native window is r = L / lambda_i with
    wavelength lambda_i = 2 pi / theta_i. Pairs with r > beta_fast are kept (extrapolated), pairs
    with r < beta_slow are interpolated by s, and a linear ramp gamma blends in between:
    theta'_i = (1 - gamma_i) theta_i / s + gamma_i theta_i.
    The ramp is defined on the pair index, with the boundaries
    d(r) = dim * ln(L / (2 pi r)) / (2 ln b), floored/ceiled as the reference implementation does
    (``truncate=False`` keeps them fractional, as some released configs ask).
    """
    theta = default_inv_freq(dim, base)

    def boundary(rotations: float) -> float:
        return dim * math.log(native / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = boundary(beta_fast), boundary(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    i = torch.arange(dim // 2, dtype=torch.float64)
    ramp = ((i - low) / (high - low)).clamp(0, 1)  # 0: keep frequency, 1: interpolate
    gamma = 1 - ramp
    inv_freq = theta / factor * (1 - gamma) + theta * gamma
    return inv_freq, yarn_attention_factor(factor)


def llama3_inv_freq(
    dim: int, base: float, factor: float, native: int, low_freq_factor: float = 1.0, high_freq_factor: float = 4.0
) -> tuple[torch.Tensor, float]:
    """Llama 3.1 wavelength-banded scaling (Llama 3 report, arXiv 2407.21783, Sec. 3.3.5 / reference code).

    Wavelengths shorter than L / high_freq_factor are kept, longer than L / low_freq_factor are
    divided by s, and in between the frequency is blended with
    smooth = (L / lambda - low_freq_factor) / (high_freq_factor - low_freq_factor):
    theta' = (1 - smooth) theta / s + smooth theta.
    """
    theta = default_inv_freq(dim, base)
    wavelen = 2 * math.pi / theta
    low_wavelen = native / low_freq_factor
    high_wavelen = native / high_freq_factor
    smooth = (native / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * theta / factor + smooth * theta
    out = torch.where(wavelen > low_wavelen, theta / factor, theta)
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, blended, out), 1.0


def longrope_inv_freq(
    dim: int, base: float, short_factor: list, long_factor: list, factor: float, native: int, seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """LongRoPE (Ding et al. 2024, arXiv 2402.13753, Eq. 3; as shipped with Phi-3): per-pair rescale factors.

    theta'_i = theta_i / lambda_i with lambda the ``long_factor`` list for sequences longer than the
    pre-training window L, the ``short_factor`` list otherwise; attention scaling
    sqrt(1 + ln(s) / ln(L)) with s the extension factor.
    """
    lam = torch.tensor(long_factor if seq_len and seq_len > native else short_factor, dtype=torch.float64)
    scale = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(native))
    return default_inv_freq(dim, base) / lam, scale


def inv_freq_from_rope_parameters(
    rope_parameters: dict, head_dim: int, max_position_embeddings: int, seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """The frequencies a transformers ``rope_parameters`` dict implies, computed here (not by transformers).

    Used to check a base model's own scaling (Llama-3.1's llama3, a released YaRN or LongRoPE model)
    that ``method: none`` keeps. Raises ValueError for a RoPE type without a formula here.
    """
    rp = rope_parameters
    theta, kind = float(rp["rope_theta"]), rp.get("rope_type", "default")
    dim = rotary_dim(head_dim, rp.get("partial_rotary_factor", 1.0))
    original = rp.get("original_max_position_embeddings") or max_position_embeddings
    factor = rp.get("factor")
    if kind == "default":
        return default_inv_freq(dim, theta), 1.0
    if kind == "linear":
        return pi_inv_freq(dim, theta, factor)
    if kind == "dynamic":
        return dynamic_ntk_inv_freq(dim, theta, factor, max_position_embeddings, seq_len or max_position_embeddings)
    if kind == "llama3":
        return llama3_inv_freq(dim, theta, factor, original, rp["low_freq_factor"], rp["high_freq_factor"])
    if kind == "yarn":
        factor = factor or max_position_embeddings / original
        inv, _ = yarn_inv_freq(dim, theta, factor, original, rp.get("beta_fast") or 32.0, rp.get("beta_slow") or 1.0,
                               rp.get("truncate", True))
        scale = rp.get("attention_factor") or yarn_attention_factor(factor, rp.get("mscale"), rp.get("mscale_all_dim"))
        return inv, scale
    if kind == "longrope":
        factor = factor or max_position_embeddings / original
        inv, scale = longrope_inv_freq(dim, theta, rp["short_factor"], rp["long_factor"], factor, original, seq_len)
        return inv, rp.get("attention_factor") or scale
    raise ValueError(f"rope_type {kind!r} has no reference formula in longctx.rope")


def abf_base_for_target(base: float, native: int, target: int) -> float:
    """A base large enough for the target length (Liu et al. 2023, arXiv 2310.05209, Eq. 12).

    The "critical base" rule of the scaling-law paper: a model trained at window L with base b
    extrapolates to T when the longest trained wavelength covers T, giving
    b' = b^(ln(T / 2 pi) / ln(L / 2 pi)). For SmolLM2 (b = 1e5, L = 8k) and T = 32k: b' ~ 9.3e5.
    """
    return base ** (math.log(target / (2 * math.pi)) / math.log(native / (2 * math.pi)))


def abf_inv_freq(dim: int, new_base: float) -> tuple[torch.Tensor, float]:
    """Adjusted Base Frequency (Xiong et al. 2023, arXiv 2309.16039; Entropy-ABF arXiv 2401.07004, Sec. 3).

    Plain RoPE with a larger base, e.g. 500000 instead of Llama-2's 10000.
    """
    return default_inv_freq(dim, new_base), 1.0


def entropy_attention_factor(position: torch.Tensor, native: int) -> torch.Tensor:
    """Entropy-aware logit scaling (Entropy-ABF, arXiv 2401.07004, Eq. 9).

    The query at 0-based position i is multiplied by max(1, log(i + 1) / log(c)) with c the
    native window, which keeps attention entropy from growing past the window while leaving
    logits inside it untouched.
    """
    return torch.clamp(torch.log(position.to(torch.float32) + 1) / math.log(native), min=1.0)


def critical_reach(base_inv_freq: torch.Tensor, inv_freq: torch.Tensor, native: int) -> float | None:
    """How far a frequency change stretches the *critical* RoPE dimensions (Liu et al., arXiv 2310.05209, Sec. 3).

    A pair whose wavelength ``2 pi / theta_i`` exceeds the native window L never turned a full period in
    training, so it only knows the angles ``p * theta_i`` for p < L. With new speeds ``theta'_i`` it stays inside
    them up to position ``L * theta_i / theta'_i``; the reach is the smallest of these over the critical pairs
    (None when no pair is critical). PI and YaRN divide those speeds by s (reach s * L); NTK-aware scaling by
    ``s^(2i / (d - 2))`` for pair i (Eq. in ``ntk_base``), less than s for all but the last pair, so its reach
    falls short of s * L. Used by ``benchmarks/trainfree_probe.py`` to explain passkey misses past the window.
    """
    base, new = base_inv_freq.double().cpu(), inv_freq.double().cpu()
    critical = 2 * math.pi / base > native
    if not critical.any():
        return None
    return float((native * base[critical] / new[critical]).min())
