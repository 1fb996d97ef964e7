"""The ``data:`` block of params.yaml, validated.

Every key has a default so ``DataConfig.from_dict({})`` is a valid (embedded-only) config.
Validation errors are ``ValueError`` messages that name the offending key the way it is
spelled in params.yaml (``data.num_samples``, ``data.sources[1].weight``, ...), so a typo
in the YAML is reported before any data is read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

SOURCE_TYPES = ("embedded_chitchat", "sharegpt", "longalpaca", "documents", "embedded_documents")
DOCUMENT_TYPES = ("documents", "embedded_documents")  # language modelling: loss on every token
LOSS_ON = ("assistant", "all")
OVERLONG_POLICIES = ("drop", "truncate")
CURRICULA = ("none", "short_to_long")


@dataclass(frozen=True)
class SourceConfig:
    """One entry of ``data.sources``.

    type:        ``embedded_chitchat`` (built offline from the ``chitchat-dataset`` package),
                 ``sharegpt`` (``conversations``/``from``/``value`` or ``messages``/``role``/
                 ``content`` records) or ``longalpaca`` (``instruction``/``input``/``output``).
    path_or_id:  a local ``.json`` (list of records) or ``.jsonl`` file, or a Hugging Face
                 dataset id loaded with ``datasets.load_dataset``. Required for the file
                 formats; for ``embedded_chitchat`` it may point to an alternative
                 ``dataset.json`` in the chitchat format (default: the packaged one).
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

    type: str = "embedded_chitchat"
    path_or_id: str | None = None
    weight: float = 1.0
    split: str = "train"
    revision: str | None = None
    name: str | None = None
    loss_on: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.type

    @property
    def loss_tokens(self) -> str:
        """``loss_on`` with the type's default filled in."""
        return self.loss_on or ("all" if self.type in DOCUMENT_TYPES else "assistant")


@dataclass(frozen=True)
class DataConfig:
    """Keys of the ``data:`` block (see ``DEFAULT_YAML`` for the same thing as YAML).

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
    sources:       list of ``SourceConfig`` mappings.
    """

    seed: int = 0
    num_samples: int = 1000
    max_tokens: int = 8192
    min_tokens: int = 32
    overlong: str = "truncate"
    curriculum: str = "none"
    pack: bool = False
    embedded_min_fraction: float = 0.5
    embedded_max_fraction: float = 0.95
    embedded_questions: int = 4
    sources: tuple[SourceConfig, ...] = field(default_factory=lambda: (SourceConfig(),))

    @classmethod
    def from_dict(cls, d: dict | None) -> "DataConfig":
        """Build and validate a config from the plain ``data:`` dict of params.yaml."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"data.{key} is not a known key (known: {', '.join(sorted(known))})")
        kw = {k: v for k, v in d.items() if k != "sources"}
        if "sources" in d:
            kw["sources"] = tuple(_source_from_dict(s, i) for i, s in enumerate(_as_list(d["sources"])))
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        out = asdict(self)
        out["sources"] = [asdict(s) for s in self.sources]
        return out

    def validate(self) -> None:
        _check_int(self.seed, "data.seed")
        _check_int(self.num_samples, "data.num_samples", minimum=1)
        _check_int(self.max_tokens, "data.max_tokens", minimum=1)
        _check_int(self.min_tokens, "data.min_tokens", minimum=0)
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"data.min_tokens must be <= data.max_tokens, got {self.min_tokens} > {self.max_tokens}"
            )
        _check_choice(self.overlong, "data.overlong", OVERLONG_POLICIES)
        _check_choice(self.curriculum, "data.curriculum", CURRICULA)
        if not isinstance(self.pack, bool):
            raise ValueError(f"data.pack must be true or false, got {self.pack!r}")
        for key in ("embedded_min_fraction", "embedded_max_fraction"):
            v = getattr(self, key)
            if not _is_number(v) or not 0 < v <= 1:
                raise ValueError(f"data.{key} must be in (0, 1], got {v!r}")
        if self.embedded_min_fraction > self.embedded_max_fraction:
            raise ValueError(
                "data.embedded_min_fraction must be <= data.embedded_max_fraction, got "
                f"{self.embedded_min_fraction} > {self.embedded_max_fraction}"
            )
        _check_int(self.embedded_questions, "data.embedded_questions", minimum=1)
        if not self.sources:
            raise ValueError("data.sources must list at least one source")
        if sum(s.weight for s in self.sources) <= 0:
            raise ValueError("data.sources: at least one weight must be > 0")
        seen: dict[str, int] = {}
        for i, s in enumerate(self.sources):
            if s.label in seen:
                raise ValueError(
                    f"data.sources[{i}].name: duplicate source name {s.label!r} "
                    f"(also data.sources[{seen[s.label]}]); give each source a distinct name"
                )
            seen[s.label] = i


def _source_from_dict(s, i: int) -> SourceConfig:
    where = f"data.sources[{i}]"
    if not isinstance(s, dict):
        raise ValueError(f"{where} must be a mapping, got {type(s).__name__}")
    known = {f.name for f in fields(SourceConfig)}
    for key in s:
        if key not in known:
            raise ValueError(f"{where}.{key} is not a known key (known: {', '.join(sorted(known))})")
    src = SourceConfig(**s)
    _check_choice(src.type, f"{where}.type", SOURCE_TYPES)
    if src.path_or_id is not None and (not isinstance(src.path_or_id, str) or not src.path_or_id):
        raise ValueError(f"{where}.path_or_id must be a non-empty string, got {src.path_or_id!r}")
    if src.type not in ("embedded_chitchat", "embedded_documents") and src.path_or_id is None:
        raise ValueError(f"{where}.path_or_id is required for type {src.type!r}")
    if not _is_number(src.weight) or src.weight < 0:
        raise ValueError(f"{where}.weight must be a number >= 0, got {src.weight!r}")
    if not isinstance(src.split, str) or not src.split:
        raise ValueError(f"{where}.split must be a non-empty string, got {src.split!r}")
    if src.revision is not None and not isinstance(src.revision, str):
        raise ValueError(f"{where}.revision must be a string, got {src.revision!r}")
    if src.name is not None and (not isinstance(src.name, str) or not src.name):
        raise ValueError(f"{where}.name must be a non-empty string, got {src.name!r}")
    if src.loss_on is not None:
        _check_choice(src.loss_on, f"{where}.loss_on", LOSS_ON)
        if src.type in DOCUMENT_TYPES and src.loss_on != "all":
            raise ValueError(f"{where}.loss_on: {src.type} sources have no assistant turns; use all (or leave it out)")
    return src


def _as_list(v) -> list:
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"data.sources must be a list, got {type(v).__name__}")
    return list(v)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int(v, key: str, minimum: int | None = None) -> None:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{key} must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        bound = f"> {minimum - 1}" if minimum > 0 else f">= {minimum}"
        raise ValueError(f"{key} must be {bound}, got {v}")


def _check_choice(v, key: str, choices: tuple[str, ...]) -> None:
    if v not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}; got {v!r}")


DEFAULT_YAML = """\
data:
  seed: 0
  num_samples: 1000
  max_tokens: 8192
  min_tokens: 32
  overlong: truncate          # drop | truncate (after the last whole assistant turn that fits)
  curriculum: none            # none | short_to_long
  pack: false
  embedded_min_fraction: 0.5  # embedded conversations are 0.5..0.95 x max_tokens long
  embedded_max_fraction: 0.95
  embedded_questions: 4
  sources:
    - type: embedded_chitchat # embedded_chitchat | sharegpt | longalpaca | documents | embedded_documents
      weight: 1.0
      # loss_on: assistant    (assistant | all; documents: all)
      # path_or_id: data/raw/sharegpt.jsonl   (or a hub id)
      # split: train
      # revision: null
      # name: null
"""
