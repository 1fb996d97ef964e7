"""The ``data:`` block of params.yaml: its dataclasses live in ``longctx.params`` with every other block.

``DataConfig`` / ``SourceConfig`` are the names the data package uses for them. Build one from a
plain mapping with ``DataConfig.from_dict(d)``; errors are ``ParamsError`` (a ``ValueError``) naming
the key as spelled in params.yaml (``data.num_samples``, ``data.sources[1].weight``, ...).
Defaults and allowed values are the ones written in ``longctx/params.py`` (and shown in params.yaml).
"""

from longctx.params import DataParams as DataConfig
from longctx.params import SourceParams as SourceConfig

__all__ = ["DataConfig", "SourceConfig"]

