"""HotpotQA (distractor setting) as an attribution benchmark: sentence features, gold facts.

Each item becomes one prompt in the SPEX format (a question instruction, one
``Title: ... \\n Context: ...`` block per paragraph, then ``Answer:``); the features are
all context sentences, given as char spans of the prompt (the instruction, titles and the
question stay fixed); the gold labels are the supporting facts ``(title, sent_id)``
mapped to global sentence indices (METHODS §1(d), §5.5).

Reads the project's JSONL sample (``shared/data/hotpotqa_dev_distractor_100.jsonl``:
``question``, ``answer``, ``context = [[title, [sentence, ...]], ...]``,
``supporting_facts = [[title, sent_idx], ...]``); no download.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from .jsonl import jsonl_records

INSTRUCTION = (
    "Answer the question using the context below. Answer with a few words only.\n"
    "Question: {question}\n"
)


@dataclass(frozen=True)
class HotpotItem:
    """One HotpotQA question with its paragraphs.

    paragraphs: ((title, (sentence, ...)), ...) in context order (sentences as in the data,
                leading spaces kept)
    supporting_facts: ((title, sent_id), ...) as in the data
    """

    id: str | None
    dev_index: int | None
    question: str
    answer: str
    paragraphs: tuple[tuple[str, tuple[str, ...]], ...]
    supporting_facts: tuple[tuple[str, int], ...]
    type: str | None = None
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def sentences(self) -> list[str]:
        """All context sentences, in order (the features)."""
        return [s for _, sents in self.paragraphs for s in sents]

    @property
    def sentence_titles(self) -> list[str]:
        return [t for t, sents in self.paragraphs for _ in sents]

    @property
    def n_sentences(self) -> int:
        return sum(len(s) for _, s in self.paragraphs)

    @property
    def gold(self) -> list[int]:
        """Global sentence indices of the supporting facts that are in the context.

        A fact whose title or sentence index is not in the context (HotpotQA has a few, and
        truncation removes none of them) is left out.
        """
        start: dict[str, int] = {}
        size: dict[str, int] = {}
        cursor = 0
        for title, sents in self.paragraphs:
            if title not in start:  # titles are unique in HotpotQA; keep the first anyway
                start[title], size[title] = cursor, len(sents)
            cursor += len(sents)
        out = {
            start[t] + int(i)
            for t, i in self.supporting_facts
            if t in start and 0 <= int(i) < size[t]
        }
        return sorted(out)

    def labels(self) -> np.ndarray:
        """(n_sentences,) bool: True for supporting facts."""
        lab = np.zeros(self.n_sentences, dtype=bool)
        lab[self.gold] = True
        return lab

    def prompt(self) -> tuple[str, list[tuple[int, int]]]:
        """The prompt text in the SPEX format and the (start, end) char span of each sentence.

        A span covers the sentence's own text with its leading whitespace (so deleting a
        span leaves well-spaced text); the separator after ``Context:`` stays fixed.
        """
        parts = [INSTRUCTION.format(question=self.question.strip())]
        pos = len(parts[0])
        spans: list[tuple[int, int]] = []
        for title, sents in self.paragraphs:
            head = f"Title: {title}\nContext:"
            parts.append(head)
            pos += len(head)
            for j, s in enumerate(sents):
                if j == 0 and not s[:1].isspace():
                    parts.append(" ")
                    pos += 1
                parts.append(s)
                lead = len(s) - len(s.lstrip()) if j == 0 else 0
                trail = len(s) - len(s.rstrip())
                spans.append((pos + lead, pos + len(s) - trail))
                pos += len(s)
            parts.append("\n")
            pos += 1
        parts.append("Answer:")
        text = "".join(parts)
        return text, spans

    def truncated(self, n_distractors: int, *, seed: int = 0) -> HotpotItem:
        """The same item with its gold paragraphs plus ``n_distractors`` random other ones.

        Paragraph order is kept; the choice of distractors is deterministic for a seed.
        """
        gold_titles = {t for t, _ in self.supporting_facts}
        gold = [i for i, (t, _) in enumerate(self.paragraphs) if t in gold_titles]
        other = [i for i in range(len(self.paragraphs)) if i not in gold]
        rng = np.random.default_rng(seed)
        k = min(max(0, int(n_distractors)), len(other))
        pick = sorted(set(gold) | set(rng.choice(other, size=k, replace=False).tolist()))
        meta = {**self.meta, "truncated": {"n_distractors": k, "seed": seed,
                                           "paragraphs_kept": pick,
                                           "paragraphs_total": len(self.paragraphs)}}
        return replace(self, paragraphs=tuple(self.paragraphs[i] for i in pick), meta=meta)


def spans_in(rendered: str, prompt: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Shift char spans of ``prompt`` to where ``prompt`` sits inside ``rendered`` (e.g. a
    chat template's rendering of it)."""
    at = rendered.find(prompt)
    if at < 0:
        raise InputError("The prompt text does not occur in the rendered prompt.")
    return [(a + at, b + at) for a, b in spans]


def _question(q: object) -> str:
    if not isinstance(q, str):
        raise TypeError(f"question is {q!r:.40}, not a string")
    return q


def _parse(rec: dict, line_no: int, path: Path) -> HotpotItem:
    try:
        paragraphs = []
        facts = [(str(t), int(i)) for t, i in rec.get("supporting_facts", [])]
        n_blank = 0
        if not isinstance(rec["context"], list):
            raise TypeError(f"context is a {type(rec['context']).__name__}, not a list")
        for title, sents in rec["context"]:
            # (a string's characters, or str(None) = "None", would be read as sentences)
            if not isinstance(title, str) or not isinstance(sents, list) or not all(
                    isinstance(x, str) for x in sents):
                raise TypeError(f"the paragraph {title!r:.40} is not [title, [sentence, "
                                f"...]] of strings")
            title, sents = str(title), list(sents)
            blank = [j for j, s in enumerate(sents) if not s.strip()]
            if blank:
                # a blank sentence cannot be a feature (nothing to mask): drop it and
                # renumber the facts of its paragraph
                n_blank += len(blank)
                facts = [
                    (t, i) if t != title else (t, i - sum(b < i for b in blank))
                    for t, i in facts
                    if t != title or i not in blank
                ]
                sents = [s for s in sents if s.strip()]
            paragraphs.append((title, tuple(sents)))
        return HotpotItem(
            id=rec.get("id"),
            dev_index=rec.get("dev_index"),
            question=_question(rec["question"]),
            answer=str(rec.get("answer", "")),
            paragraphs=tuple(paragraphs),
            supporting_facts=tuple(facts),
            type=rec.get("type"),
            meta={"dropped_blank_sentences": n_blank} if n_blank else {},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{path}:{line_no}: not a HotpotQA record (needs question, context = "
            f"[[title, [sentences]]], supporting_facts): {type(exc).__name__}: {exc}"
        ) from exc


def load_hotpotqa(
    path: str | Path, *, n: int | None = None, shuffle_seed: int | None = None
) -> list[HotpotItem]:
    """Items of a HotpotQA JSONL file (one record per line).

    n: keep the first n items (after shuffling); shuffle_seed: shuffle the items first with
    this seed (SPEX shuffles with 42), None keeps file order.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The HotpotQA file {path} does not exist.")
    items = [_parse(rec, i, path) for i, rec in jsonl_records(path)]
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(items))
        items = [items[j] for j in order]
    if n is not None:
        items = items[: int(n)]
    return items
