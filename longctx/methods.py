"""The registry of context-extension methods: one place lists every method, its parameters and its paper.

``METHODS`` reads like transformers' ``ROPE_INIT_FUNCTIONS``: a table from the name used in
``params.yaml`` (``method: yarn``) to what the method is. ``build_extension`` turns a method
and its parameters into the concrete changes to a model: the RoPE parameters transformers
understands natively (so the saved ``config.json`` reproduces them), an attention
implementation of ours where the method changes attention itself, and the position-id
scheme used while fine-tuning.

Where each method's math lives:
- frequencies (pi, ntk, dynamic_ntk, yarn, llama3, abf): ``longctx.rope``
- Entropy-ABF logit scaling: ``longctx.rope.entropy_attention_factor`` and ``longctx.attention``
- SelfExtend grouped + neighbour attention: ``longctx.selfextend``
- CREAM, PoSE, RandPos position ids: ``longctx.position_ids``
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch

from longctx import params as params_module
from longctx import rope


@dataclass(frozen=True)
class MethodInfo:
    name: str
    family: str  # "none" | "rope" | "attention" | "position_ids"
    paper: str
    training_free: bool  # works without fine-tuning

    @property
    def defaults(self) -> dict:
        """Parameter -> default, from the method's dataclass in ``longctx.params``."""
        return dataclasses.asdict(params_module.METHOD_PARAMS[self.name]())


FREQUENCY_FOR_POSITION_IDS = params_module.FREQUENCY_FOR_POSITION_IDS

METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in [
        MethodInfo("none", "none", "no extension (the base model as is)", True),
        MethodInfo("pi", "rope", "Position Interpolation, arXiv 2306.15595", False),
        MethodInfo("ntk", "rope", "NTK-aware scaling, bloc97 2023 / arXiv 2309.00071 Eq. 16", True),
        MethodInfo("dynamic_ntk", "rope", "Dynamic NTK, emozilla 2023 / arXiv 2309.00071 Sec. 3.3", True),
        MethodInfo("yarn", "rope", "YaRN, arXiv 2309.00071", True),
        MethodInfo("llama3", "rope", "Llama 3.1 RoPE scaling, arXiv 2407.21783", True),
        # rope_theta 0 means: choose it from the target length (rope.abf_base_for_target).
        MethodInfo("abf", "rope", "Adjusted Base Frequency, arXiv 2309.16039", True),
        MethodInfo("entropy_abf", "attention", "Entropy-ABF, arXiv 2401.07004", False),
        # group_size 0 means: the smallest group that makes the usable length cover the target.
        MethodInfo("selfextend", "attention", "SelfExtend, arXiv 2401.01325", True),
        MethodInfo("cream", "position_ids", "CREAM, arXiv 2406.07138", False),
        MethodInfo("pose", "position_ids", "PoSE, arXiv 2309.10400", False),
        MethodInfo("randpos", "position_ids", "RandPos (Ruoss et al. 2023, arXiv 2305.16843)", False),
    ]
}


def method_info(name: str) -> MethodInfo:
    if name not in METHODS:
        raise ValueError(f"method: unknown method {name!r}; allowed: {', '.join(METHODS)}")
    return METHODS[name]


def validate_method_params(name: str, params: dict | None) -> dict:
    """Fill defaults, convert types and check ranges; errors name the key ``methods.<name>.<key>``.

    The parameters, their defaults and bounds are dataclasses in ``longctx.params`` (one place).
    """
    method_info(name)
    return params_module.validate_method_params(name, params)


@dataclass
class Extension:
    """Everything a method changes about a model, in serialisable form (written to extension.json)."""

    method: str
    params: dict
    native_window: int
    target_length: int
    rope_parameters: dict  # goes to config.rope_parameters (native transformers)
    max_position_embeddings: int
    attention: dict | None = None  # goes to config.longctx_extension; needs our attention function
    position_ids: dict | None = None  # used by fine-tuning only

    @property
    def factor(self) -> float:
        return self.target_length / self.native_window

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "Extension":
        return cls(**d)


def selfextend_group_size(native: int, window: int, target: int) -> int:
    """Smallest G with usable length (L - W) * G + W >= T (SelfExtend, arXiv 2401.01325, Sec. 3)."""
    return max(1, math.ceil((target - window) / (native - window)))


def build_extension(method: str, params: dict | None, target_length: int, native_window: int, rope_theta: float,
                    head_dim: int) -> Extension:
    """Turn ``method`` + its parameters into concrete model changes. Pure: no model needed."""
    params = validate_method_params(method, params)
    info = METHODS[method]
    if rope_theta is None:
        raise ValueError(f"method: {method} needs a RoPE model, but the base model has no rope_theta")
    if method != "none" and target_length <= native_window:
        raise ValueError(
            f"target_length: must exceed the native window ({native_window}) for method {method}, got {target_length}"
        )
    factor = target_length / native_window
    theta = float(rope_theta)
    rope_params: dict = {"rope_type": "default", "rope_theta": theta}
    max_pos = target_length
    attention = None
    position_ids = None

    freq = params.get("frequency", method)
    if freq == "pi":
        rope_params = {"rope_type": "linear", "factor": factor, "rope_theta": theta}
    elif freq == "ntk":
        rope_params["rope_theta"] = theta * factor ** (head_dim / (head_dim - 2))
    elif freq == "dynamic_ntk":
        # transformers scales against max_position_embeddings: keep it at the native window,
        # raising it to the target would silently switch the method off.
        rope_params = {"rope_type": "dynamic", "factor": factor, "rope_theta": theta}
        max_pos = native_window
    elif freq == "yarn":
        rope_params = {
            "rope_type": "yarn", "factor": factor, "rope_theta": theta,
            "original_max_position_embeddings": native_window,
            "beta_fast": params.get("beta_fast", 32.0), "beta_slow": params.get("beta_slow", 1.0),
        }
    elif freq == "llama3":
        rope_params = {
            "rope_type": "llama3", "factor": factor, "rope_theta": theta,
            "original_max_position_embeddings": native_window,
            "low_freq_factor": params["low_freq_factor"], "high_freq_factor": params["high_freq_factor"],
        }
    elif method in ("abf", "entropy_abf"):
        new_theta = params["rope_theta"] or rope.abf_base_for_target(theta, native_window, target_length)
        if new_theta <= theta:
            raise ValueError(f"methods.{method}.rope_theta: must exceed the base model's {theta:g}, got {new_theta:g}")
        rope_params["rope_theta"] = float(new_theta)
        params = {**params, "rope_theta": float(new_theta)}
    elif method == "none":
        max_pos = max(native_window, target_length)

    if method == "entropy_abf":
        attention = {"method": "entropy_abf", "native_window": native_window, "skip_layers": params["skip_layers"]}
    if method == "selfextend":
        from longctx.selfextend import check_selfextend_target

        if params["window"] >= native_window:
            raise ValueError(
                f"methods.selfextend.window: must be below the native window {native_window}, got {params['window']}"
            )
        group = params["group_size"] or selfextend_group_size(native_window, params["window"], target_length)
        if params["window"] < group:
            raise ValueError(f"methods.selfextend.window: must be >= group_size ({group}), got {params['window']}")
        check_selfextend_target(native_window, group, params["window"], target_length)
        params = {**params, "group_size": group}
        attention = {"method": "selfextend", "group_size": group, "window": params["window"],
                     "scale_base": params["scale_base"]}
    if info.family == "position_ids":
        position_ids = {"method": method, **{k: v for k, v in params.items() if k != "frequency"}}

    return Extension(method, params, native_window, target_length, rope_params, max_pos, attention, position_ids)


def expected_rope(ext: Extension, head_dim: int, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """The inverse frequencies and attention scaling the extended model must use, from ``longctx.rope``.

    Independent of transformers: ``modeling.verify_rope`` compares the two after every load.
    """
    rp = ext.rope_parameters
    theta, kind = rp["rope_theta"], rp["rope_type"]
    if kind == "default":
        return rope.default_inv_freq(head_dim, theta), 1.0
    if kind == "linear":
        return rope.pi_inv_freq(head_dim, theta, rp["factor"])
    if kind == "dynamic":
        return rope.dynamic_ntk_inv_freq(head_dim, theta, rp["factor"], ext.native_window, seq_len or ext.native_window)
    if kind == "yarn":
        return rope.yarn_inv_freq(head_dim, theta, rp["factor"], ext.native_window, rp["beta_fast"], rp["beta_slow"])
    if kind == "llama3":
        return rope.llama3_inv_freq(
            head_dim, theta, rp["factor"], ext.native_window, rp["low_freq_factor"], rp["high_freq_factor"]
        )
    raise ValueError(f"rope_type {kind!r} has no reference implementation here")


def warn_eval_beyond_support(ext: Extension, max_eval_length: int) -> None:
    """Warn when evaluation goes past what the method is configured for (results there are extrapolation)."""
    if ext.method != "none" and max_eval_length > ext.target_length:
        warnings.warn(
            f"eval length {max_eval_length} exceeds target_length {ext.target_length} of method {ext.method}: "
            "results past the target are extrapolation",
            stacklevel=2,
        )
