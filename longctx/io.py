"""Atomic file output: write to a temporary file beside the target, then rename.

A crash mid-write leaves the previous file intact instead of a truncated one. Outputs never share
storage with their inputs (``copy_file`` clones or copies, never hard-links): an in-place write to
one file cannot silently change another, or the DVC cache behind it (.dvc/config: reflink,copy).
Metrics are strict JSON: a NaN or infinity is an error naming the key, never a non-standard token.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

FICLONE = 0x40049409  # linux/fs.h: share the data blocks copy-on-write (btrfs, XFS, bcachefs, ...)


def atomic_write_lines(path: str | Path, lines) -> None:
    """Stream ``lines`` (each followed by a newline) to ``path`` atomically, fsynced before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs should be readable like any written file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_lines(path, [text.removesuffix("\n")])


def atomic_savefig(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure through a temporary file and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")  # a legend outside the axes is never cut off
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _non_finite_key(obj, where: str = "") -> str | None:
    """The dotted key of the first NaN/infinity in ``obj`` (None if every number is finite)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for k, v in items:
        sub = f"{where}{k}" if str(k).startswith("[") else (f"{where}.{k}" if where else str(k))
        found = _non_finite_key(v, sub)
        if found:
            return found
    return None


class NonFiniteMetricError(ValueError):
    """A metric that is NaN or infinite: the run that produced it went wrong, and nothing was written."""


def atomic_write_json(path: str | Path, obj) -> None:
    """Strict JSON (RFC 8259): a NaN or infinity anywhere raises ``NonFiniteMetricError`` naming its key;
    nothing is written."""
    bad = _non_finite_key(obj)
    if bad is not None:
        raise NonFiniteMetricError(f"{path}: {bad} is not a finite number; refusing to write non-standard JSON "
                         "(a metric that can be undefined must be written as null)")
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` as an independent file: a copy-on-write clone where the filesystem can
    (instant, no extra disk), else a byte copy. Never a hard link, whose shared inode would let an
    in-place write to one file change the other (and the DVC cache object behind both).
    """
    with open(src, "rb") as fs, open(dst, "wb") as fd:
        try:
            fcntl.ioctl(fd.fileno(), FICLONE, fs.fileno())
        except OSError:
            shutil.copyfileobj(fs, fd, length=16 << 20)
    shutil.copystat(src, dst)
    os.chmod(dst, 0o644)  # a DVC-protected (read-only) source must not make the copy read-only


def read_json(path: str | Path):
    with open(path) as f:
        return json.load(f)


class AtomicDir:
    """Build a directory under a temporary name and move it into place on success.

    >>> with AtomicDir("models/extended") as tmp:
    ...     save_things(tmp)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}."))
        os.chmod(self.tmp, 0o755)  # mkdtemp creates 0700
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
        return False
