"""Resumable results store: one JSON line per finished record, content keyed.

A record is one (item, method, params, model hash, seed, evaluation settings) combination;
its ``key`` is the sha256 of the canonical JSON of those fields (:func:`record_key`). Each
record is appended and flushed (and fsynced) as it finishes, so a killed run loses at most
the record in progress; a rerun reads the file, skips the keys already there and computes
the rest. A torn last line (the kill came mid-write) is ignored. When a key occurs twice the
later line wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..result import json_safe
from .datasets import canonical_sha256

RECORDS = "records.jsonl"


def record_key(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the fields that define a record."""
    return canonical_sha256(fields)


#: what a run writes inside its output folder: files, and folders
_OUT_FILES = (RECORDS, "summary.json", "summary.md", "index.html")
_OUT_DIRS = ("attributions", "items")


def _check_out(out: Path) -> None:
    """Refuse an output folder that cannot be one (a file, a path through a file) or that
    holds a folder where a file goes or the other way round, before any work (these failed
    as internal errors, some after every record was computed); and a non-empty folder that
    holds no run (it would be overwritten)."""
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"The output folder {out} cannot be made: {probe} is a file; give "
                         f"another --out.")
    for name in _OUT_FILES:
        if (out / name).is_dir():
            raise InputError(f"{out / name} is a folder where the run writes a file; move it "
                             f"or give another --out.")
    for name in _OUT_DIRS:
        if (out / name).exists() and not (out / name).is_dir():
            raise InputError(f"{out / name} is a file where the run writes a folder; move it "
                             f"or give another --out.")
    if out.is_dir() and not (out / RECORDS).is_file():
        # a folder of something else: the run would overwrite its index.html, summary.md...
        # (attributions/ and items/ alone are what a run killed before its first record
        # leaves: that is resumed)
        other = sorted(p.name for p in out.iterdir()
                       if not (p.name in _OUT_DIRS and p.is_dir()))
        if other:
            raise InputError(
                f"The output folder {out} is not empty and holds no attrlens run (no "
                f"{RECORDS}; it holds {', '.join(other[:3])}{', ...' if len(other) > 3 else ''}"
                f"): the run would overwrite its files; give an empty or new folder as --out.")


def read_record_lines(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The records of a ``records.jsonl`` (the latest line per key, in first-written order)
    and how many lines were torn (not JSON: a write cut short by a kill, anywhere in the
    file, since a resumed run writes on after it); a line of JSON that is not a record is a
    one-line InputError. NaN and infinities read as None."""
    out: dict[str, dict[str, Any]] = {}
    torn = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line, parse_constant=lambda _: None)
            except json.JSONDecodeError:
                torn += 1
                continue
            if not isinstance(rec, dict) or "key" not in rec:
                raise InputError(
                    f"{path} holds a line that is not a results record; give an empty or "
                    f"attrlens output directory."
                )
            out[rec["key"]] = rec
    return out, torn


class ResultsStore:
    """Records of one output directory (``DIR/records.jsonl``)."""

    def __init__(self, out: str | Path):
        if not isinstance(out, (str, Path)) or not str(out).strip():
            # Path("") is the working directory: the run wrote there, reporting "/summary.md"
            raise InputError(f"The output folder must be a folder name, e.g. --out runs/alpaca; "
                             f"got {out!r}.")
        self.dir = Path(out)
        try:
            _check_out(self.dir)
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"The output folder {out} cannot be created ({exc.strerror}); "
                             f"give a folder you can write as --out.") from None
        self.path = self.dir / RECORDS
        self._records: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        self._records, self.torn_lines = read_record_lines(self.path)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def records(self) -> list[dict[str, Any]]:
        """All records (latest per key), in first-written order."""
        return list(self._records.values())

    def append(self, record: dict[str, Any]) -> None:
        """Write one finished record (a line, flushed to disk at once)."""
        if "key" not in record:
            raise InputError("A results record needs a 'key'.")
        # (strict JSON: a metric that could not be computed, NaN, is written as null)
        line = json.dumps(json_safe(record), sort_keys=True, ensure_ascii=False,
                          allow_nan=False)
        # a torn line left by a kill must not swallow this record: start on a fresh line
        lead = ""
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    lead = "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(lead + line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records[record["key"]] = record
