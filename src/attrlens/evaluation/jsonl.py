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
        fh = path.open("rb")
    except OSError as exc:
        raise InputError(f"Cannot read the data file {path}: {exc.strerror}.") from None
    with fh:
        # read line by line: a caller that stops (a limit) leaves the rest unread
        offset = 0
        for i, raw in enumerate(fh, start=1):
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, offset = raw[3:], 3
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"The data file {path} is not UTF-8 text (line {i}, byte "
                                 f"{offset + exc.start}); save it as UTF-8.") from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path.name}:{i}: invalid JSON: {exc}") from exc
