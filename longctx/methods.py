"""The table of context-extension methods: one entry per method, holding what the method is and does.

``METHODS`` reads like transformers' ``ROPE_INIT_FUNCTIONS``: a table from the name used in
``params.yaml`` (``method: yarn``) to a :class:`Method` with its paper, its parameters and three
functions:

- ``check(params)``: rules between parameters beyond the type/range checks every method gets;
- ``rope(base, params, factor)``: the ``rope_parameters`` transformers should run (so a saved
  ``config.json`` reproduces them natively);
- ``expected(base, params, factor, dim, seq_len)``: the inverse frequencies and attention scaling
  the extended model must end up with, computed with ``longctx.rope`` from the BASE model's RoPE
  and the method's parameters, never from the ``rope_parameters`` this module wrote.
  ``modeling.verify_rope`` compares it with what transformers computed after every load.

Methods that change attention (Entropy-ABF, SelfExtend) or fine-tuning positions (CREAM, PoSE,
RandPos) add ``attention(...)`` / position-id settings on top.

Where each method's math lives (every formula in one place):
- frequencies (pi, ntk, dynamic_ntk, yarn, llama3, abf): ``longctx.rope``
- Entropy-ABF logit scaling: ``longctx.rope.entropy_attention_factor`` and ``longctx.attention``
- SelfExtend grouped + neighbour attention and its parameter rules: ``longctx.selfextend``
- CREAM, PoSE, RandPos position ids: ``longctx.position_ids``

A base model that already carries RoPE scaling (Llama-3.1's llama3, a YaRN, linear, LongRoPE or
dynamic model) keeps it under ``method: none``. ``pi``/``yarn``/``llama3`` compose with a base
scaling of their own kind (the factor grows by target / native window, the model's other
settings stay); every other combination is refused with a message that says what to set.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from longctx import params as params_module
from longctx import rope
from longctx.selfextend import check_selfextend_params, check_selfextend_target

# Keys of a transformers rope_parameters dict that describe a scaling; any other key (rope_theta,
# partial_rotary_factor, ...) describes the model and is carried over to the extended config.
SCALING_KEYS = frozenset({
    "rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "low_freq_factor",
    "high_freq_factor", "short_factor", "long_factor", "attention_factor", "mscale", "mscale_all_dim", "truncate",
})
FREQUENCY_FOR_POSITION_IDS = params_module.FREQUENCY_FOR_POSITION_IDS


# ---------------------------------------------------------------------------------------------
# The base model's RoPE, as extension methods see it
# ---------------------------------------------------------------------------------------------


def rope_kind(base: dict | None) -> str:
    """"none" (no RoPE), "per_layer" (a dict per layer type, Gemma-3), or the rope_type of the one dict."""
    if not base:
        return "none"
    if all(isinstance(v, dict) for v in base.values()):
        return "per_layer"
    return base.get("rope_type", "default")


def model_keys(base: dict) -> dict:
    """The keys of the base's rope dict that describe the model, not a scaling (rope_theta, partial_rotary_factor)."""
    return {k: v for k, v in base.items() if k not in SCALING_KEYS}


def base_factor(base: dict) -> float:
    """The scaling factor the base model already runs (1 for plain RoPE)."""
    return float(base.get("factor") or 1.0) if rope_kind(base) != "default" else 1.0


def _dim(base: dict, head_dim: int) -> int:
    return rope.rotary_dim(head_dim, base.get("partial_rotary_factor", 1.0))


def _refuse_scaled_base(name: str, base: dict, same_kind: str | None = None) -> None:
    kind = rope_kind(base)
    if kind in ("default", same_kind):
        return
    if kind == "per_layer":
        raise ValueError(
            f"method: {name} is not supported for a model with per-layer-type RoPE (rope_parameters for "
            f"{', '.join(sorted(base))}, e.g. Gemma-3): longctx extends one rope_parameters dict. Use method: none"
        )
    composes = next((m.name for m in METHODS.values() if m.composes_with == kind), None)
    raise ValueError(
        f"method: {name} cannot start from the base model's own RoPE scaling (rope_type {kind}, factor "
        f"{base.get('factor')}): it would replace those frequencies and discard what the model learned with them. "
        "Use method: none to keep the model's scaling (up to its native window)"
        + (f", or method: {composes} to scale its {kind} frequencies further" if composes else "") + "."
    )


# ---------------------------------------------------------------------------------------------
# Per method: rope(base, params, s) -> rope_parameters, expected(base, params, s, seq_len) -> (inv_freq, scaling)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """The lengths a method works with: native window L, target T, head size, the config's max_position_embeddings."""

    native: int
    target: int
    head_dim: int
    max_positions: int

    @property
    def factor(self) -> float:
        return self.target / self.native


def _keep_rope(base, params, s):
    return dict(base) if base else None


def _expected_kept(base, params, s, seq_len):
    # the base's own scaling, whatever its type (dynamic, yarn and longrope read max_position_embeddings)
    return rope.inv_freq_from_rope_parameters(base, s.head_dim, s.max_positions, seq_len)


def _plain_rope(base, params, s):
    return {**model_keys(base), "rope_type": "default"}


def _plain_expected(base, params, s, seq_len):
    return rope.default_inv_freq(_dim(base, s.head_dim), base["rope_theta"]), 1.0


def _pi_rope(base, params, s):
    return {**base, "rope_type": "linear", "factor": base_factor(base) * s.factor}


def _pi_expected(base, params, s, seq_len):
    return rope.pi_inv_freq(_dim(base, s.head_dim), base["rope_theta"], base_factor(base) * s.factor)


def _ntk_rope(base, params, s):
    return {**model_keys(base), "rope_type": "default",
            "rope_theta": rope.ntk_base(base["rope_theta"], s.factor, _dim(base, s.head_dim))}


def _ntk_expected(base, params, s, seq_len):
    return rope.ntk_inv_freq(_dim(base, s.head_dim), base["rope_theta"], s.factor)


def _dynamic_rope(base, params, s):
    return {**model_keys(base), "rope_type": "dynamic", "factor": s.factor}


def _dynamic_expected(base, params, s, seq_len):
    return rope.dynamic_ntk_inv_freq(_dim(base, s.head_dim), base["rope_theta"], s.factor, s.native, seq_len or s.native)


def _same_as_base(name: str, base: dict, params: dict, base_defaults: dict) -> None:
    """Composing with the base's own scaling keeps its band settings: refuse a different one, by name."""
    if rope_kind(base) == "default":
        return
    for key, base_default in base_defaults.items():
        have = base.get(key) or base_default
        if float(params[key]) != float(have):
            raise ValueError(
                f"methods.{name}.{key}: the base model already runs {name} with {key}={have:g}; scaling it further "
                f"keeps that value, got {params[key]:g}; set methods.{name}.{key}: {have:g}"
            )


def _yarn_rope(base, params, s):
    _same_as_base("yarn", base, params, {"beta_fast": 32.0, "beta_slow": 1.0})
    if rope_kind(base) == "yarn" and base.get("attention_factor") is not None:
        raise ValueError("method: yarn cannot rescale a base model whose yarn config fixes attention_factor "
                         f"({base['attention_factor']}): the temperature for the new factor is unknown. Use method: none")
    rope_params = {**base, "rope_type": "yarn", "factor": base_factor(base) * s.factor,
                   "original_max_position_embeddings": base.get("original_max_position_embeddings") or s.native,
                   "beta_fast": params["beta_fast"], "beta_slow": params["beta_slow"]}
    if params.get("attention_factor"):  # transformers uses it as given instead of 0.1 ln(s) + 1
        rope_params["attention_factor"] = params["attention_factor"]
    return rope_params


def _yarn_expected(base, params, s, seq_len):
    total = base_factor(base) * s.factor
    inv, _ = rope.yarn_inv_freq(_dim(base, s.head_dim), base["rope_theta"], total,
                                base.get("original_max_position_embeddings") or s.native, params["beta_fast"],
                                params["beta_slow"], base.get("truncate", True))
    return inv, (params.get("attention_factor")
                 or rope.yarn_attention_factor(total, base.get("mscale"), base.get("mscale_all_dim")))


def _llama3_rope(base, params, s):
    _same_as_base("llama3", base, params, {"low_freq_factor": 1.0, "high_freq_factor": 4.0})
    return {**base, "rope_type": "llama3", "factor": base_factor(base) * s.factor,
            "original_max_position_embeddings": base.get("original_max_position_embeddings") or s.native,
            "low_freq_factor": params["low_freq_factor"], "high_freq_factor": params["high_freq_factor"]}


def _llama3_expected(base, params, s, seq_len):
    return rope.llama3_inv_freq(_dim(base, s.head_dim), base["rope_theta"], base_factor(base) * s.factor,
                                base.get("original_max_position_embeddings") or s.native,
                                params["low_freq_factor"], params["high_freq_factor"])


def _abf_theta(name: str, base: dict, params: dict, s: Scale) -> float:
    """The new base: ``methods.<name>.rope_theta``, or 0 = the critical-base rule (rope.abf_base_for_target)."""
    theta = float(base["rope_theta"])
    new = params["rope_theta"] or rope.abf_base_for_target(theta, s.native, s.target)
    if new <= theta:
        raise ValueError(f"methods.{name}.rope_theta: must exceed the base model's {theta:g}, got {new:g}")
    return float(new)


def _abf_rope(name):
    def build(base, params, s):
        return {**model_keys(base), "rope_type": "default", "rope_theta": _abf_theta(name, base, params, s)}
    return build


def _abf_expected(base, params, s, seq_len):
    return rope.abf_inv_freq(_dim(base, s.head_dim), _abf_theta("abf", base, params, s))


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One method. Its parameters (defaults, bounds, rules between them) are its dataclass in
    ``longctx.params.METHOD_PARAMS``; ``validate_method_params`` reads them from there."""

    name: str
    family: str  # "none" | "rope" | "attention" | "position_ids"
    paper: str
    training_free: bool  # works without fine-tuning
    rope: Callable | None = None  # (base rope dict, params, Scale) -> rope_parameters for the config
    expected: Callable | None = None  # (base rope dict, params, Scale, seq_len) -> (inv_freq, attention scaling)
    composes_with: str | None = None  # the base rope_type this method can scale further (besides plain RoPE)


    @property
    def defaults(self) -> dict:
        """Parameter -> default, from the method's dataclass in ``longctx.params``."""
        return dataclasses.asdict(params_module.METHOD_PARAMS[self.name]())


MethodInfo = Method  # the earlier name

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("none", "none", "no extension (the base model as is)", True, rope=_keep_rope, expected=_expected_kept),
        Method("pi", "rope", "Position Interpolation, arXiv 2306.15595", False, rope=_pi_rope, expected=_pi_expected,
               composes_with="linear"),
        Method("ntk", "rope", "NTK-aware scaling, bloc97 2023 / arXiv 2309.00071 Eq. 16", True,
               rope=_ntk_rope, expected=_ntk_expected),
        Method("dynamic_ntk", "rope", "Dynamic NTK, emozilla 2023 / arXiv 2309.00071 Sec. 3.3", True,
               rope=_dynamic_rope, expected=_dynamic_expected),
        Method("yarn", "rope", "YaRN, arXiv 2309.00071", True, rope=_yarn_rope, expected=_yarn_expected, composes_with="yarn"),
        Method("llama3", "rope", "Llama 3.1 RoPE scaling, arXiv 2407.21783", True,
               rope=_llama3_rope,
               expected=_llama3_expected, composes_with="llama3"),
        # rope_theta 0 means: choose it from the target length (rope.abf_base_for_target).
        Method("abf", "rope", "Adjusted Base Frequency, arXiv 2309.16039", True, rope=_abf_rope("abf"),
               expected=_abf_expected),
        Method("entropy_abf", "attention", "Entropy-ABF, arXiv 2401.07004", False, rope=_abf_rope("entropy_abf"),
               expected=_abf_expected),
        # group_size 0 means: the smallest group that makes the usable length cover the target.
        Method("selfextend", "attention", "SelfExtend, arXiv 2401.01325", True, rope=_plain_rope,
               expected=_plain_expected),
        # position-id methods run the frequencies of methods.<name>.frequency (pi, ntk or yarn)
        Method("cream", "position_ids", "CREAM, arXiv 2406.07138", False),
        Method("pose", "position_ids", "PoSE, arXiv 2309.10400", False),
        Method("randpos", "position_ids", "RandPos (Ruoss et al. 2023, arXiv 2305.16843)", False),
    ]
}


def method_info(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method: unknown method {name!r}; allowed: {', '.join(METHODS)}")
    return METHODS[name]


def frequency_method(name: str, params: dict) -> Method:
    """The entry whose frequencies a method runs: itself, or for CREAM/PoSE/RandPos its ``frequency``."""
    return METHODS[params.get("frequency", name)] if METHODS[name].family == "position_ids" else METHODS[name]


def frequency_params(name: str, params: dict) -> dict:
    """The parameters of the entry whose frequencies ``name`` runs: its own, or for CREAM/PoSE/RandPos the
    frequency method's defaults, with YaRN's ``attention_factor`` taken from the position-id method."""
    freq = frequency_method(name, params)
    if freq.name == name:
        return params
    if freq.name == "yarn" and "attention_factor" in params:  # older extension.json files lack it: the paper's value
        return validate_method_params("yarn", {"attention_factor": params["attention_factor"]})
    return validate_method_params(freq.name, {})


def validate_method_params(name: str, params: dict | None) -> dict:
    """Fill defaults, convert types and check ranges; errors name the key ``methods.<name>.<key>``.

    The parameters, their defaults and bounds are dataclasses in ``longctx.params`` (one place).
    """
    method_info(name)
    return params_module.validate_method_params(name, params)


# ---------------------------------------------------------------------------------------------
# Extension: what a method changes, in serialisable form
# ---------------------------------------------------------------------------------------------


@dataclass
class Extension:
    """Everything a method changes about a model, in serialisable form (written to extension.json)."""

    method: str
    params: dict
    native_window: int
    target_length: int
    rope_parameters: dict | None  # goes to config.rope_parameters (native transformers); None: no RoPE
    max_position_embeddings: int
    attention: dict | None = None  # goes to config.longctx_extension; needs our attention function
    position_ids: dict | None = None  # used by fine-tuning only
    base_rope_parameters: dict | None = None  # the base model's own rope dict: what expected_rope starts from

    @property
    def factor(self) -> float:
        return self.target_length / self.native_window

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "Extension":
        d = dict(d)
        if "base_rope_parameters" not in d:  # written before the base was recorded: plain RoPE with the base theta
            theta = (d.get("rope_parameters") or {}).get("rope_theta")
            d["base_rope_parameters"] = {"rope_type": "default", "rope_theta": theta} if theta else None
            if d["method"] in ("ntk", "abf", "entropy_abf"):
                raise ValueError("extension.json predates the recorded base RoPE; run the extend stage again")
        return cls(**d)


def selfextend_default_window(native: int) -> int:
    """``methods.selfextend.window: 0``: a quarter of the native window (at least 1)."""
    return max(1, native // 4)


def selfextend_group_size(native: int, window: int, target: int) -> int:
    """Smallest G with usable length (L - W) * G + W >= T (SelfExtend, arXiv 2401.01325, Sec. 3)."""
    return max(1, math.ceil((target - window) / (native - window)))


def _as_rope_dict(base_rope) -> dict | None:
    """A base given as a bare theta (plain RoPE) or a transformers rope dict; None for a model without RoPE."""
    if base_rope is None:
        return None
    if isinstance(base_rope, (int, float)):
        return {"rope_type": "default", "rope_theta": float(base_rope)}
    return dict(base_rope)


def build_extension(method: str, params: dict | None, target_length: int, native_window: int, base_rope,
                    head_dim: int, max_position_embeddings: int | None = None) -> Extension:
    """Turn ``method`` + its parameters into concrete model changes. Pure: no model needed.

    ``base_rope`` is the base model's RoPE: its ``rope_parameters`` dict (native.json records it),
    a bare ``rope_theta`` for plain RoPE, or None for a model without RoPE (only ``none`` then).
    ``max_position_embeddings`` is the base config's (default: the native window).
    """
    params = validate_method_params(method, params)
    info = METHODS[method]
    base = _as_rope_dict(base_rope)
    scale = Scale(native_window, target_length, head_dim, max_position_embeddings or native_window)
    if method == "none":
        # Nothing changes. Plain RoPE may announce the longer length (its frequencies do not depend on it);
        # any other RoPE (dynamic, yarn, longrope) and learned positions (GPT-2) do, so they keep theirs.
        max_pos = max(native_window, target_length) if rope_kind(base) == "default" else scale.max_positions
        return Extension(method, params, native_window, target_length, _keep_rope(base, params, scale), max_pos,
                         base_rope_parameters=base)
    if base is None:
        raise ValueError(f"method: {method} needs a RoPE model, but the base model has no rope_theta "
                         "(no rotary position embedding); use method: none")
    if target_length <= native_window:
        raise ValueError(
            f"target_length: must exceed the native window ({native_window}) for method {method}, got {target_length}"
        )
    freq = frequency_method(method, params)
    _refuse_scaled_base(method, base, freq.composes_with)
    rope_params = freq.rope(base, frequency_params(method, params), scale)
    # transformers' dynamic NTK scales against max_position_embeddings: keep it at the native window,
    # raising it to the target would silently switch the method off.
    max_pos = native_window if freq.name == "dynamic_ntk" else target_length
    attention = position_ids = None
    if method == "entropy_abf":
        attention = {"method": "entropy_abf", "native_window": native_window, "skip_layers": params["skip_layers"]}
    if method == "selfextend":
        # window 0 = a quarter of the native window (2048 for an 8k model: better than 1024 at every length on
        # the embedded model, docs/RESULTS.md "Tenth run"); group 0 = the smallest that covers the target.
        window = params["window"] or selfextend_default_window(native_window)
        check_selfextend_params(params["group_size"] or None, window, params["scale_base"], native_window)
        group = params["group_size"] or selfextend_group_size(native_window, window, target_length)
        check_selfextend_params(group, window, params["scale_base"], native_window)
        check_selfextend_target(native_window, group, window, target_length)
        params = {**params, "group_size": group, "window": window}
        attention = {"method": "selfextend", "group_size": group, "window": window,
                     "scale_base": params["scale_base"]}
    if info.family == "position_ids":
        position_ids = {"method": method, **{k: v for k, v in params.items() if k not in ("frequency", "attention_factor")}}
    return Extension(method, params, native_window, target_length, rope_params, max_pos, attention, position_ids,
                     base_rope_parameters=base)


def expected_rope(ext: Extension, head_dim: int, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """The inverse frequencies and attention scaling the extended model must use, from ``longctx.rope``.

    Computed from the base model's RoPE and the method's parameters through the method's table
    entry, independently of ``ext.rope_parameters`` (what was written to the config) and of
    transformers: ``modeling.verify_rope`` compares the two after every load.
    """
    base = ext.base_rope_parameters
    if rope_kind(base) in ("none", "per_layer"):
        raise ValueError(f"expected_rope: the base RoPE is {rope_kind(base)!r}; compare per layer type in verify_rope")
    freq = frequency_method(ext.method, ext.params)
    params = frequency_params(ext.method, ext.params)
    scale = Scale(ext.native_window, ext.target_length, head_dim, ext.max_position_embeddings)
    return freq.expected(base, params, scale, seq_len)


def warn_eval_beyond_support(ext: Extension, max_eval_length: int) -> None:
    """Warn when evaluation goes past what the method is configured for (results there are extrapolation)."""
    if ext.method != "none" and max_eval_length > ext.target_length:
        warnings.warn(
            f"eval length {max_eval_length} exceeds target_length {ext.target_length} of method {ext.method}: "
            "results past the target are extrapolation",
            stacklevel=2,
        )
