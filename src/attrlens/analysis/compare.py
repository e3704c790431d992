"""Comparing two attributions of prompts that differ in a few words (GiLOT §5.2), for any
method: e.g. "Write a story about a female homemaker." vs "... a male homemaker." — how
much, and how highly ranked, is the differing word in each?"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..result import Attribution, json_safe

Slots = list[tuple[list[int], list[int]]]


def align_slots(labels_a: Sequence[str], labels_b: Sequence[str]) -> Slots:
    """Feature slots where two label sequences differ: [(indices in a, indices in b)]
    (difflib alignment of the whitespace-stripped labels; case counts: "Apple" is not
    "apple")."""

    def norm(s: str) -> str:
        return s.strip()

    sm = difflib.SequenceMatcher(a=[norm(x) for x in labels_a], b=[norm(x) for x in labels_b],
                                 autojunk=False)
    return [
        (list(range(i1, i2)), list(range(j1, j2)))
        for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"
    ]


@dataclass
class Comparison:
    """Two attributions aligned by word slot.

    slots: [(features in a, features in b)] for each differing region; ``slots[0]`` is the
           slot of a one-word contrast.
    """

    a: Attribution
    b: Attribution
    slots: Slots

    @property
    def slot_a(self) -> list[int]:
        return self.slots[0][0] if self.slots else []

    @property
    def slot_b(self) -> list[int]:
        return self.slots[0][1] if self.slots else []

    def summary(self) -> list[dict[str, Any]]:
        """Per slot and side: features, labels, summed score, best rank by importance
        (|score|; 1 = top, ties by feature order, non-finite scores last) and share of the
        total |score| (of the finite scores; the score and share of a slot with a non-finite
        score are NaN, null in :meth:`to_dict`)."""
        rows = []
        for fa, fb in self.slots:
            row: dict[str, Any] = {}
            for side, attr, feats in (("a", self.a, fa), ("b", self.b, fb)):
                s = np.asarray(attr.scores, dtype=float)
                order = np.argsort(-np.abs(s), kind="stable")
                rank = [int(np.flatnonzero(order == i)[0]) + 1 for i in feats]
                tot = float(np.abs(s[np.isfinite(s)]).sum())  # non-finite scores left out
                score = float(s[feats].sum()) if feats else 0.0  # NaN if one of them is
                row[side] = {
                    "features": list(feats),
                    "labels": [attr.labels[i] for i in feats],
                    "score": score,
                    "rank": min(rank) if rank else None,
                    "share": score / tot if feats and tot > 0 else 0.0,
                }
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(),
                "slots": [[list(x), list(y)] for x, y in self.slots],
                "summary": json_safe(self.summary())}


def compare_attributions(a: Attribution, b: Attribution) -> Comparison:
    """Align two attributions (same method and settings, prompts differing in a few
    words) by their differing feature slots."""
    slots = align_slots(a.labels, b.labels)
    if not slots:
        raise InputError("The two prompts have the same features; give prompts that differ.")
    return Comparison(a=a, b=b, slots=slots)


def run_compare(
    prompt_a: str | list[dict[str, str]],
    prompt_b: str | list[dict[str, str]],
    explain: Callable[[Any], Attribution],
) -> Comparison:
    """Explain both prompts with the same ``explain`` callable and align them."""
    if _words(prompt_a) == _words(prompt_b):  # before two explanations are paid for
        raise InputError("The two prompts have the same words (they differ at most in "
                         "spacing); give prompts that differ.")
    return compare_attributions(explain(prompt_a), explain(prompt_b))


def _words(prompt: str | list[dict[str, str]]) -> Any:
    """The prompt without its whitespace (per message): the features are aligned on labels
    stripped of it, so "a,b" and "a, b" align as the same features (that was found only
    after both explanations were paid for)."""
    if isinstance(prompt, str):
        return "".join(prompt.split())
    return [(m.get("role"), "".join(str(m.get("content", "")).split())) for m in prompt]
