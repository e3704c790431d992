"""Reading JSONL data files: one JSON value per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError


def jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed value) of each non-blank line of the UTF-8 file ``path``.
    A byte-order mark some editors write is not data; lines are split at newlines only
    (U+2028 and the like may stand inside a JSON string). Text that is not UTF-8, or a line
    that is not JSON, is a one-line InputError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"The data file {path} is not UTF-8 text (byte {exc.start}); save it "
                         f"as UTF-8.") from None
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path.name}:{i}: invalid JSON: {exc}") from exc
