"""Readers for the file-based sources: ShareGPT and LongAlpaca.

Both come either from a local file (``.jsonl``: one record per line; ``.json``: a list of
records) or from a Hugging Face dataset id (``datasets.load_dataset(id, split, revision)``).
Every record is turned into a list of ``{"role", "content"}`` messages with roles
``system`` / ``user`` / ``assistant``.

Schema problems are errors, not silent skips: a malformed record raises ValueError whose
message starts with where it is (``path:line`` for JSON lines, ``path: record index i`` for a
JSON list or a hub dataset) followed by what is wrong. Content-level problems (too long,
no assistant reply) are handled later by filtering and counted in the data card.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from longctx.data.config import SourceConfig

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
MESSAGES_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


def iter_records(source: SourceConfig) -> Iterator[tuple[str, object]]:
    """Yield ``(where, record)`` for a local file or a hub dataset; ``where`` locates errors."""
    ref = source.path_or_id
    path = Path(ref)
    if path.is_file():
        yield from _iter_local(path)
    elif path.suffix in (".json", ".jsonl") or path.is_dir():
        # Looks like a local path, so a hub lookup would only produce a confusing error.
        raise ValueError(f"{ref}: local file not found (data source {source.label!r})")
    else:
        yield from _iter_hub(source)


def _iter_local(path: Path) -> Iterator[tuple[str, object]]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
                yield where, record
    elif path.suffix == ".json":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        for i, record in enumerate(data):
            yield f"{path}: record index {i}", record
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .json or .jsonl)")


def _iter_hub(source: SourceConfig) -> Iterator[tuple[str, object]]:
    import datasets  # deferred: heavy import, and only needed for hub sources

    ds = datasets.load_dataset(source.path_or_id, split=source.split, revision=source.revision)
    for i, record in enumerate(ds):
        yield f"{source.path_or_id} ({source.split}): record index {i}", record


def parse_sharegpt(record, where: str) -> list[Message]:
    """``{"conversations": [{"from", "value"}]}`` or ``{"messages": [{"role", "content"}]}``."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "conversations" in record:
        turns, role_key, text_key, roles = record["conversations"], "from", "value", SHAREGPT_ROLES
        field = "conversations"
    elif "messages" in record:
        turns, role_key, text_key, roles = record["messages"], "role", "content", MESSAGES_ROLES
        field = "messages"
    else:
        raise ValueError(f"{where}: missing key 'conversations' (or 'messages')")
    if not isinstance(turns, list):
        raise ValueError(f"{where}: '{field}' must be a list, got {type(turns).__name__}")
    if not turns:
        raise ValueError(f"{where}: empty conversation")
    out = []
    for j, turn in enumerate(turns):
        at = f"{where}: {field}[{j}]"
        if not isinstance(turn, dict):
            raise ValueError(f"{at}: expected an object, got {type(turn).__name__}")
        for key in (role_key, text_key):
            if key not in turn:
                raise ValueError(f"{at}: missing key '{key}'")
        role = roles.get(turn[role_key]) if isinstance(turn[role_key], str) else None
        if role is None:
            raise ValueError(
                f"{at}: unknown role {turn[role_key]!r} (expected one of {', '.join(roles)})"
            )
        if role == "system" and j != 0:
            raise ValueError(f"{at}: a system message is only allowed first")
        if not isinstance(turn[text_key], str):
            raise ValueError(f"{at}: '{text_key}' must be a string, got {type(turn[text_key]).__name__}")
        out.append({"role": role, "content": turn[text_key]})
    return out


def parse_longalpaca(record, where: str) -> list[Message]:
    """``{"instruction", "input", "output"}`` -> user: instruction + "\\n\\n" + input, assistant: output.

    ``input`` may be missing or empty (LongAlpaca-12k puts the long text in ``instruction``).
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("instruction", "output"):
        if key not in record:
            raise ValueError(f"{where}: missing key '{key}'")
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: '{key}' must be a string, got {type(record[key]).__name__}")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError(f"{where}: 'input' must be a string, got {type(extra).__name__}")
    if not record["instruction"].strip() and not extra.strip():
        raise ValueError(f"{where}: empty conversation (no instruction or input)")
    user = record["instruction"] + ("\n\n" + extra if extra else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


PARSERS = {"sharegpt": parse_sharegpt, "longalpaca": parse_longalpaca}


def load_conversations(source: SourceConfig) -> list[list[Message]]:
    """Read and validate every record of a file/hub source (so errors surface deterministically)."""
    parse = PARSERS[source.type]
    return [parse(record, where) for where, record in iter_records(source)]
