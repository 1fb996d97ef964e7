"""The inputs params name outside the repository: local data files and hub ids.

``fingerprint_sources`` checks every local file named in ``data.sources`` (UTF-8, JSON syntax, with
file and line) and hashes it: the ``sources`` stage writes the hashes to a small JSON that ``prepare``
depends on, so editing a local source reruns prepare (DVC cannot depend on a path that lives in params).

``check_local_or_hub`` fails fast on a name that is neither a local path nor reachable on the hub:
transformers and datasets retry an unreachable hub for 30-50 s before failing with a
``ConnectionError`` that does not say the name was meant as a local folder. ``check_local_or_hub``
answers in at most ``timeout`` seconds: an existing path passes; a hub id passes when it is in the
local hub cache or the hub answers a TCP connection; anything else is one ``ParamsError`` naming the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from longctx.params import DataParams, ParamsError


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def _cached(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}").is_dir()


def _hub_reachable(timeout: float) -> str | None:
    """None when the hub endpoint accepts a TCP connection, else why not."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port}: {e.strerror or type(e).__name__}"


def check_local_or_hub(name: str, key: str, repo_type: str = "model", timeout: float = 3.0) -> str:
    """``"local"``, ``"cached"`` or ``"hub"`` for a usable name; else ParamsError('<key>: ...') within ``timeout``."""
    if Path(name).expanduser().exists():
        return "local"
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ParamsError(f"{key}: {name!r} is neither an existing path nor a valid hub id") from None
    if _cached(name, repo_type):
        return "cached"
    if _offline():
        raise ParamsError(f"{key}: {name!r} is neither an existing path nor in the local hub cache "
                          "(HF_HUB_OFFLINE is set)")
    why = _hub_reachable(timeout)
    if why is not None:
        raise ParamsError(f"{key}: {name!r} is neither an existing path nor reachable on the hub ({why})")
    return "hub"


def _check_text(data: bytes, where: str) -> str:
    """``data`` decoded as UTF-8; a bad byte is an error naming the file and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ParamsError(f"{where}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); "
                          "re-encode the file as UTF-8") from None


def _check_json(text: str, path: Path, where: str) -> None:
    """JSON syntax of a ``.json`` file or of each line of a ``.jsonl`` file, with the line of the first error."""
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    raise ParamsError(f"{where}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    elif path.suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise ParamsError(f"{where}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


def fingerprint_sources(cfg: DataParams) -> dict:
    """SHA-256 of every local file named in ``data.sources`` (every file of a folder), checked on the way.

    Each file must be UTF-8 and, for ``.json`` / ``.jsonl``, valid JSON: an error names the key, the file
    and the line. The result is the same dict for the same bytes, so a DVC stage that writes it as JSON
    (stages/sources.py) changes its output, and reruns what depends on it, exactly when a file changes.
    """
    out = []
    for i, src in cfg.local_sources():
        root = Path(src.path_or_id).expanduser()
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            data = f.read_bytes()
            where = f"data.sources[{i}].path_or_id: {f}"
            if f.suffix in (".json", ".jsonl", ".txt"):
                _check_json(_check_text(data, where), f, where)
            out.append({"source": i, "path": str(f), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return {"local_files": out}
