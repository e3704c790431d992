"""Evaluation data sets: one JSONL loader with adapters for the project's shared samples.

Every record becomes an :class:`EvalItem` (prompt, optional fixed output, feature spans,
gold feature indices). The format of a file is detected from its first record's fields:

=========  ==========================================  ======================================
kind       fields                                      item
=========  ==========================================  ======================================
generic    ``prompt`` or ``messages``; optional         as given (``spans`` are char spans of
           ``output``, ``spans``, ``granularity``,      the prompt text, ``labels`` = gold
           ``labels``, ``id``                           feature indices or a 0/1 vector)
alpaca     ``instruction``, ``input``, ``output``       instruction (+ blank line + input);
                                                        the model's own answer is explained
                                                        (GiLOT); the reference kept in meta
sst2       ``sentence``, ``label``, ``label_text``      review template; features = words of
                                                        the sentence; output = the label word
drop       ``passage``, ``question``, ``answers``       passage + question; features = words
                                                        of the passage; output = answers[0]
mmlu       ``question``, ``choices``, ``answer``        question + lettered choices; features
                                                        = words of question and choices;
                                                        output = " <letter>"
hotpotqa   ``context``, ``supporting_facts``            SPEX prompt format; features =
                                                        context sentences; gold = supporting
                                                        facts; the model's own answer
=========  ==========================================  ======================================

A generic record with any other field is refused (naming the closest accepted one), so a
misspelt field is never silently ignored.

Relative paths are resolved against the working directory first, then the repository root
(so ``../shared/data/alpaca_50.jsonl`` works from anywhere inside the checkout).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, unknown_name_message
from .jsonl import jsonl_records

KINDS = ("auto", "generic", "alpaca", "sst2", "drop", "mmlu", "hotpotqa")
#: the fields a generic record may have: any other is refused (a misspelt field would be
#: ignored, e.g. 'outptu' explained the model's own answer instead of the record's output)
GENERIC_FIELDS = ("prompt", "messages", "output", "spans", "granularity", "labels", "id")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class EvalItem:
    """One explicand.

    prompt:      text, or chat messages [{"role", "content"}]
    output:      the explained output (None = the model's own greedy answer)
    granularity: feature granularity (None = the evaluation's default); "span" with ``spans``
    spans:       ((start, end), ...) char spans of the prompt text (raw, before any chat
                 template) that are the features; None = segment by granularity
    gold:        sorted gold feature indices (supporting facts), or None
    meta:        provenance (source kind, index fields, reference answer)
    """

    id: str
    prompt: str | tuple[dict[str, str], ...]
    output: str | None = None
    granularity: str | None = None
    spans: tuple[tuple[int, int], ...] | None = None
    gold: tuple[int, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def content(self) -> dict[str, Any]:
        """The fields that define the item (what its content hash covers)."""
        prompt = self.prompt if isinstance(self.prompt, str) else [dict(m) for m in self.prompt]
        return {
            "prompt": prompt,
            "output": self.output,
            "granularity": self.granularity,
            "spans": [list(s) for s in self.spans] if self.spans is not None else None,
            "gold": list(self.gold) if self.gold is not None else None,
        }

    @property
    def sha256(self) -> str:
        """sha256 of the canonical JSON of :meth:`content`."""
        return canonical_sha256(self.content())


def canonical_sha256(obj: Any) -> str:
    """sha256 hex of ``obj`` as canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def repo_root() -> Path:
    """The checkout's root (the directory above ``src/``)."""
    return Path(__file__).resolve().parents[3]


def resolve_data_path(path: str | Path) -> Path:
    """An existing data file: absolute, relative to the working directory, or relative to the
    repository root (in that order)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"The data path {str(path)!r} is a directory; give a JSONL file.")
    if p.is_file():
        return p
    if not p.is_absolute():
        q = repo_root() / p
        if q.is_file():
            return q
    raise InputError(
        f"The data file {str(path)!r} does not exist (looked in the working directory and the "
        f"repository root {repo_root().name}/); give a JSONL file such as "
        f"../shared/data/alpaca_50.jsonl."
    )


def word_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) char spans of the whitespace-separated words of ``text[start:end]``."""
    end = len(text) if end is None else end
    return [(start + m.start(), start + m.end()) for m in _WORD.finditer(text[start:end])]


def detect_kind(rec: dict[str, Any]) -> str:
    """The adapter for a record, from its fields."""
    if "prompt" in rec or "messages" in rec:
        return "generic"
    if "context" in rec and "supporting_facts" in rec:
        return "hotpotqa"
    if "instruction" in rec:
        return "alpaca"
    if "sentence" in rec and ("label" in rec or "label_text" in rec):
        return "sst2"
    if "passage" in rec and "question" in rec:
        return "drop"
    if "choices" in rec and "question" in rec:
        return "mmlu"
    raise InputError(
        f"Cannot tell the data set of a record with fields {sorted(rec)}; give 'prompt' (or "
        f"'messages') with optional 'output', 'spans', 'labels', or a record of the shared "
        f"Alpaca, SST-2, DROP, MMLU or HotpotQA files."
    )


def _gold(labels: Any, n: int | None) -> tuple[int, ...] | None:
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(
            isinstance(v, int) and (isinstance(v, bool) or v >= 0) for v in labels):
        raise InputError("'labels' must be a list of feature indices (ints >= 0) or of one "
                         "0/1 flag per span.")
    if n is not None and len(labels) == n and all(v in (0, 1, True, False) for v in labels):
        return tuple(i for i, v in enumerate(labels) if v)
    if len(set(labels)) != len(labels) or any(isinstance(v, bool) for v in labels):
        # [0, 0, 1, 0] without spans read as the indices {0, 1}: the wrong gold features
        raise InputError(
            f"'labels' {labels} repeat a value or hold true/false: a 0/1 flag per feature "
            f"needs the record's 'spans' (one flag per span); without spans, give the gold "
            f"features' indices once each (e.g. [2]).")
    return tuple(sorted(int(i) for i in labels))


def _text(rec: dict[str, Any], name: str) -> str:
    """The record's field ``name``, which must be a string (``str()`` would read a null as
    the text "None" and a number as its digits: bad data explained as if it were text)."""
    v = rec[name]
    if not isinstance(v, str):
        raise InputError(f"'{name}' must be a string; got {type(v).__name__}"
                         f"{'' if v is None else f' {v!r}'}.")
    return v


def _strings(rec: dict[str, Any], name: str) -> list[str]:
    """The record's list-of-strings field ``name`` ([] when missing or null; a lone string
    would be read character by character)."""
    v = rec.get(name)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InputError(f"'{name}' must be a list of strings; got {v!r:.60}.")
    return v


def _generic(rec: dict[str, Any], idx: str) -> EvalItem:
    for k in rec:
        if k not in GENERIC_FIELDS:
            raise InputError(unknown_name_message("field", k, GENERIC_FIELDS))
    if "messages" in rec and "prompt" in rec:
        raise InputError("give 'prompt' or 'messages', not both (the other would be ignored).")
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in msgs
        ):
            raise InputError("'messages' must be a list of {role, content} objects with "
                             "string values.")
        from ..text.prompt import validate_messages

        validate_messages(msgs)  # an unknown role is bad data, not an item to retry later
        prompt: str | tuple[dict[str, str], ...] = tuple(
            {"role": m["role"], "content": m["content"]} for m in msgs
        )
    else:
        if not isinstance(rec["prompt"], str):
            raise InputError(f"'prompt' must be a string; got {type(rec['prompt']).__name__}.")
        prompt = rec["prompt"]
    if rec.get("output") is not None and not isinstance(rec["output"], str):
        raise InputError(f"'output' must be a string; got {type(rec['output']).__name__}.")
    spans = rec.get("spans")
    if spans is not None and not (isinstance(spans, list) and all(
            isinstance(sp, list) and len(sp) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in sp)
            for sp in spans)):
        raise InputError("'spans' must be a list of [start, end] pairs of ints (char offsets "
                         "into the prompt).")
    spans_t = tuple((a, b) for a, b in spans) if spans is not None else None
    if rec.get("granularity") is not None:  # (checked here, before any model is loaded)
        from ..text.segment import GRANULARITIES

        if rec["granularity"] not in GRANULARITIES:
            raise InputError(unknown_name_message("granularity", rec["granularity"],
                                                  GRANULARITIES))
        if rec["granularity"] == "span" and spans_t is None:
            raise InputError("granularity 'span' needs the record's 'spans' ([start, end] "
                             "char offsets of the features); give them or another "
                             "granularity.")
    gran = rec.get("granularity") or ("span" if spans_t is not None else None)
    n = len(spans_t) if spans_t is not None else None
    ident = rec.get("id", idx)
    if not isinstance(ident, (str, int)) or isinstance(ident, bool):
        raise InputError(f"'id' must be a string or an integer (or left out: the line "
                         f"number); got {ident!r:.60}.")
    return EvalItem(
        id=str(ident),
        prompt=prompt,
        output=rec.get("output"),
        granularity=gran,
        spans=spans_t,
        gold=_gold(rec.get("labels"), n),
        meta={"kind": "generic"},
    )


def _alpaca(rec: dict[str, Any], idx: str) -> EvalItem:
    instr, inp = rec["instruction"], rec.get("input")
    if not isinstance(instr, str) or not (inp is None or isinstance(inp, str)):
        raise InputError("'instruction' must be a string and 'input' a string or null.")
    # (a null input is no input: it was written into the prompt as "None")
    instr, inp = instr.strip(), (inp or "").strip()
    prompt = f"{instr}\n\n{inp}" if inp else instr
    sid = rec.get("subset_index")
    return EvalItem(
        id=f"alpaca-{sid}" if sid is not None else idx,
        prompt=prompt,
        meta={"kind": "alpaca", "subset_index": sid, "reference": rec.get("output")},
    )


def _sst2(rec: dict[str, Any], idx: str) -> EvalItem:
    head = "Review: "
    sent = _text(rec, "sentence").strip()
    prompt = f"{head}{sent}\nIs this review positive or negative? Answer:"
    spans = word_spans(prompt, len(head), len(head) + len(sent))
    names = {0: "negative", 1: "positive"}
    num, text = rec.get("label"), rec.get("label_text")
    if text is not None and text not in names.values():
        raise InputError(f"'label_text' must be 'negative' or 'positive'; got {text!r}.")
    if "label" in rec and (isinstance(num, bool) or num not in names):
        raise InputError(f"'label' must be 0 (negative) or 1 (positive); got {num!r} (an "
                         f"unlabelled test row has -1: use labelled rows).")
    if num is None and text is None:
        raise InputError("an SST-2 record needs 'label' (0/1) or 'label_text'.")
    if num is not None and text is not None and names[num] != text:
        raise InputError(f"'label' {num} ({names[num]}) and 'label_text' {text!r} disagree.")
    label = text or names[num]
    di = rec.get("dev_index")
    return EvalItem(
        id=f"sst2-{di}" if di is not None else idx,
        prompt=prompt,
        output=f" {label}",
        granularity="span",
        spans=tuple(spans),
        meta={"kind": "sst2", "dev_index": di, "label": rec.get("label")},
    )


def _drop(rec: dict[str, Any], idx: str) -> EvalItem:
    head = "Passage: "
    passage = _text(rec, "passage").strip()
    prompt = f"{head}{passage}\nQuestion: {_text(rec, 'question').strip()}\nAnswer:"
    spans = word_spans(prompt, len(head), len(head) + len(passage))
    answers = _strings(rec, "answers")
    sl = rec.get("source_line")
    return EvalItem(
        id=f"drop-{sl}" if sl is not None else idx,
        prompt=prompt,
        output=f" {answers[0]}" if answers else None,
        granularity="span",
        spans=tuple(spans),
        meta={"kind": "drop", "source_line": sl, "answers": answers},
    )


def _mmlu(rec: dict[str, Any], idx: str) -> EvalItem:
    letters = "ABCDEFGHIJ"
    choices = rec["choices"]
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(letters):
        raise InputError(f"'choices' must be a list of 2 to {len(letters)} answers.")
    answer = _mmlu_answer(rec.get("answer"), rec.get("answer_index"), letters[: len(choices)])
    if not all(isinstance(c, str) for c in choices):
        raise InputError(f"'choices' must be strings; got {choices!r:.80}.")
    lines = [_text(rec, "question").strip()]
    lines += [f"{letters[i]}. {c.strip()}" for i, c in enumerate(choices)]
    body = "\n".join(lines)
    prompt = f"{body}\nAnswer with the letter of the correct choice. Answer:"
    spans = word_spans(prompt, 0, len(body))
    # the choice letters ("A.") are frozen: only words of the question and the choices count
    spans = [s for s in spans if not re.fullmatch(r"[A-J]\.", prompt[s[0] : s[1]])]
    sr, subject = rec.get("source_row"), rec.get("subject")
    # MMLU's rows are numbered per subject (the shared sample has row 190 of two subjects)
    ident = idx if sr is None else f"mmlu-{subject}-{sr}" if subject else f"mmlu-{sr}"
    return EvalItem(
        id=ident,
        prompt=prompt,
        output=f" {answer}" if answer else None,
        granularity="span",
        spans=tuple(spans),
        meta={"kind": "mmlu", "subject": subject, "source_row": sr},
    )


def _mmlu_answer(answer: Any, index: Any, letters: str) -> str | None:
    """The answer's letter: MMLU files give it as a letter ("B") or as the choice's index
    (1, as the Hugging Face copy does); an ``answer_index`` beside it must agree."""
    def letter(v: Any, name: str) -> str | None:
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(letters):
            return letters[v]
        if isinstance(v, str) and len(v.strip()) == 1 and v.strip() in letters:
            return v.strip()
        raise InputError(f"'{name}' must be one of {', '.join(letters)} or a choice index "
                         f"0..{len(letters) - 1}; got {v!r}.")

    a, i = letter(answer, "answer"), letter(index, "answer_index")
    if a is not None and i is not None and a != i:
        raise InputError(f"'answer' {answer!r} and 'answer_index' {index!r} disagree.")
    return a or i


def _hotpotqa(rec: dict[str, Any], idx: str, line_no: int, path: Path) -> EvalItem:
    from .hotpotqa import _parse

    h = _parse(rec, line_no, path)
    text, spans = h.prompt()
    di = h.dev_index
    return EvalItem(
        id=f"hotpotqa-{di}" if di is not None else (h.id or idx),
        prompt=text,
        granularity="span",
        spans=tuple(spans),
        gold=tuple(h.gold),
        meta={"kind": "hotpotqa", "dev_index": di, "answer": h.answer},
    )


def item_from_record(
    rec: dict[str, Any], *, kind: str = "auto", index: int = 0, path: Path | None = None
) -> EvalItem:
    """One :class:`EvalItem` from a JSON record (``kind``: one of KINDS)."""
    if kind not in KINDS:
        raise InputError(f"Unknown data kind {kind!r}; expected one of {', '.join(KINDS)}.")
    if not isinstance(rec, dict):
        raise InputError(f"Record {index + 1} is not a JSON object ({{...}}); got "
                         f"{type(rec).__name__}.")
    if kind == "auto":
        kind = detect_kind(rec)
    idx = f"{path.stem if path else 'item'}-{index}"
    where = f"Line {index + 1} of {path.name}" if path else f"Record {index + 1}"
    if isinstance(rec.get("id"), (str, int)) and not isinstance(rec.get("id"), bool):
        where += f" (id {rec['id']!r})"
    try:
        if kind == "generic":
            return _generic(rec, idx)
        if kind == "alpaca":
            return _alpaca(rec, idx)
        if kind == "sst2":
            return _sst2(rec, idx)
        if kind == "drop":
            return _drop(rec, idx)
        if kind == "mmlu":
            return _mmlu(rec, idx)
        return _hotpotqa(rec, idx, index + 1, path or Path("data"))
    except InputError as exc:  # (before ValueError, which it is)
        raise InputError(f"{where} is not a valid {kind} record: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputError(
            f"{where} is not a valid {kind} record: {type(exc).__name__}: {exc}"
        ) from exc


def load_items(
    data: str | Path | Sequence[dict[str, Any] | EvalItem],
    *,
    kind: str = "auto",
    limit: int | None = None,
) -> list[EvalItem]:
    """Items of a JSONL file (path) or of in-memory records / items, in order.

    limit: keep the first ``limit`` items. Item ids must be unique (they key the results).
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InputError(f"limit must be a positive integer or None; got {limit!r}.")
    items: list[EvalItem] = []
    if isinstance(data, (str, Path)):
        path = resolve_data_path(data)
        records = jsonl_records(path)
        # the limit is checked before the next line is read: what lies after it is not parsed
        while limit is None or len(items) < limit:
            nxt = next(records, None)
            if nxt is None:
                break
            line_no, rec = nxt
            items.append(item_from_record(rec, kind=kind, index=line_no - 1, path=path))
    else:
        if isinstance(data, (bytes, dict)) or not hasattr(data, "__iter__"):
            raise InputError(
                f"The data must be a JSONL file's path or a list of records (dicts) or "
                f"EvalItems; got {type(data).__name__}.")
        for i, rec in enumerate(data):
            if limit is not None and len(items) >= limit:
                break
            items.append(rec if isinstance(rec, EvalItem) else item_from_record(
                rec, kind=kind, index=i))
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise InputError(f"Two items have the id {it.id!r}; item ids must be unique.")
        seen.add(it.id)
    if not items:
        raise InputError("The data set has no items.")
    return items
