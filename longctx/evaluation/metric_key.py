"""Metric keys as a type: the one place that writes and reads the flat metric names.

Every metric the pipeline stores is a flat ``dvc metrics`` key. Its parts, in order::

    <task>[.<length>][.d<depth>][.<detail>][.<stat>][.<model>]

    passkey.16384                 accuracy at 16k (mean over depths)
    passkey.16384.d0.5            accuracy at depth 0.5
    passkey.16384.lo / .hi / .n   95% Wilson interval bounds and the number of samples
    ppl.16384.bucket3             perplexity of the last quarter of the window
    passkey.effective_length      longest length that stays above the threshold (summary only)
    passkey.16384.extended        any of the above, of one model (summary keys end in the model)
    longbench.hotpotqa            a task without a length; ``check.greedy_agreement``, ``info.*``

``MetricKey.format`` writes a key and ``MetricKey.parse`` reads it back (``parse(k.format()) == k``);
``suite.py`` writes eval keys, ``aggregate.py`` adds the model suffix, ``report.py`` reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

MODELS = ("base", "extended")
STATS = ("lo", "hi", "n")  # Wilson interval bounds and sample count of an accuracy cell
DETAIL = re.compile(r"bucket\d+|effective_length|in_window|threshold")
DEPTH = re.compile(r"d(\d+(?:\.\d+)?(?:e-?\d+)?)")


@dataclass(frozen=True)
class MetricKey:
    task: str  # passkey, needle, multikey, ppl, longbench.hotpotqa, ...
    length: int | None = None  # context length in tokens
    depth: float | None = None  # needle depth in [0, 1]
    detail: str | None = None  # bucket<i> (perplexity by position), effective_length, in_window, threshold
    stat: str | None = None  # None = the value; lo / hi = 95% Wilson bounds; n = samples
    model: str | None = None  # base | extended (summary keys only)

    def __post_init__(self):
        if not self.task or self.task.split(".")[-1] in (*MODELS, *STATS) or DETAIL.fullmatch(self.task.split(".")[-1]):
            raise ValueError(f"metric key: bad task name {self.task!r}")
        if self.detail is not None and not DETAIL.fullmatch(self.detail):
            raise ValueError(f"metric key: detail must match {DETAIL.pattern}, got {self.detail!r}")
        if self.stat not in (None, *STATS):
            raise ValueError(f"metric key: stat must be one of {STATS} or None, got {self.stat!r}")
        if self.model not in (None, *MODELS):
            raise ValueError(f"metric key: model must be one of {MODELS} or None, got {self.model!r}")

    def format(self) -> str:
        parts = [self.task]
        if self.length is not None:
            parts.append(str(self.length))
        if self.depth is not None:
            parts.append(f"d{self.depth:g}")
        parts += [p for p in (self.detail, self.stat, self.model) if p is not None]
        return ".".join(parts)

    __str__ = format

    @classmethod
    def parse(cls, key: str) -> MetricKey:
        """Read a key written by :meth:`format`; ValueError names the key it cannot read."""
        parts = key.split(".")
        model = parts.pop() if len(parts) > 1 and parts[-1] in MODELS else None
        stat = parts.pop() if len(parts) > 1 and parts[-1] in STATS else None
        detail = parts.pop() if len(parts) > 1 and DETAIL.fullmatch(parts[-1]) else None
        # the length is the first all-digit part after the task; the depth ("d0.5") may follow it
        at = next((i for i, p in enumerate(parts) if i > 0 and p.isdigit()), None)
        length, depth = None, None
        if at is not None:
            length = int(parts[at])
            rest = ".".join(parts[at + 1:])
            if rest:
                m = DEPTH.fullmatch(rest)
                if not m:
                    raise ValueError(f"metric key {key!r}: cannot read {rest!r} after the length (want d<depth>)")
                depth = float(m.group(1))
            parts = parts[:at]
        try:
            return cls(".".join(parts), length, depth, detail, stat, model)
        except ValueError as e:
            raise ValueError(f"metric key {key!r}: {e}") from None

    @classmethod
    def try_parse(cls, key: str) -> MetricKey | None:
        try:
            return cls.parse(key)
        except ValueError:
            return None

    def of(self, model: str | None) -> MetricKey:
        """The same key for ``model`` (summary) or without a model (eval metrics)."""
        return replace(self, model=model)

    def with_stat(self, stat: str | None) -> MetricKey:
        return replace(self, stat=stat)

    @property
    def is_cell(self) -> bool:
        """A main value per (task, length): no depth, detail or statistic."""
        return self.length is not None and self.depth is None and self.detail is None and self.stat is None
