"""Attribution-guided query weight (GiLOT §5.1, Eq. 12), for any method's attribution.

For an in-context-learning prompt (demonstrations, then a query), the query weight is the
share of the total attribution that falls on the query's features:

    aqw = sum_{i in query} a_i / sum_i a_i        in [0, 1]   (scores >= 0, e.g. GiLOT's)

The query is given as char offsets into the prompt, or marked in the prompt with ``[[...]]``
(the markers are removed before the model reads it)::

    text, span = locate_query("Review: great. Sentiment: positive\\n[[Review: dull. Sentiment:]]")
    res = query_weight_of(explain(text), text, span)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..result import Attribution

Explain = Callable[[str], Attribution]


def _trimmed(text: str, a: int, b: int) -> tuple[int, int]:
    """(a, b) without the whitespace at its ends (word features carry their leading space)."""
    if not text:
        return a, b
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def features_in_span(attribution: Attribution, span: tuple[int, int]) -> list[int]:
    """Indices of the features whose text lies inside ``span`` = (start, end) of the
    attribution's input text. A feature's leading/trailing whitespace does not count: the
    word " banana" lies inside the span of "banana"."""
    a, b = span
    text = attribution.input_text
    out = []
    for i, sps in enumerate(attribution.spans):
        parts = [_trimmed(text, int(s), int(e)) for s, e in sps]
        parts = [(s, e) for s, e in parts if e > s]
        if parts and all(a <= s and e <= b for s, e in parts):
            out.append(i)
    return out


def check_query_has_features(text: str, span: tuple[int, int], granularity: str) -> None:
    """Refuse, before anything is explained, a query span that holds no whole ``granularity``
    feature of ``text`` (word, sentence or message; token features need the tokenizer and
    are checked after the explanation). The explainable text's own features are cut as the
    explainers cut it, so a span over part of a word is refused here, not after the model
    ran."""
    from ..text.segment import char_segments

    if granularity not in ("word", "sentence", "message"):
        return
    a, b = span
    for sps in char_segments(text, [(0, len(text))], granularity):
        parts = [_trimmed(text, s, e) for s, e in sps]
        if all(a <= s and e <= b for s, e in parts if e > s):
            return
    raise InputError(
        f"No {granularity} feature lies inside the query span {tuple(span)} "
        f"({text[a:b]!r}): the span must cover at least one whole {granularity}; widen it "
        f"or use a finer granularity."
    )


def query_weight(
    attribution: Attribution,
    query_features: Iterable[int] | None = None,
    *,
    query_span: tuple[int, int] | None = None,
) -> float:
    """The share of the total attribution on the query, sum_{i in query} a_i / sum_i a_i.

    query_features: feature indices of the query, or give ``query_span`` = (start, end) char
    offsets of the attribution's input text (features inside it form the query). Scores must
    be finite, non-negative (as GiLOT's) and not all zero.
    """
    scores = np.asarray(attribution.scores, dtype=float)
    if query_span is not None:
        if query_features is not None:
            raise InputError("Give query_features or query_span, not both.")
        idx = features_in_span(attribution, query_span)
        if not idx:
            raise InputError(f"No feature lies inside the query span {tuple(query_span)}.")
    elif query_features is None:
        raise InputError("Give the query as feature indices or as query_span=(start, end).")
    else:
        idx = sorted({int(i) for i in query_features})
        bad = [i for i in idx if not 0 <= i < len(scores)]
        if bad:
            raise InputError(f"Query feature indices {bad} are out of range 0..{len(scores) - 1}.")
        if not idx:
            raise InputError("The query has no features.")
    if not np.isfinite(scores).all() or (scores < 0).any():
        raise InputError(
            "The query weight needs finite non-negative scores (a distance-based method such "
            "as gilot); this attribution has negative or missing scores."
        )
    total = scores.sum()
    if total <= 0:
        raise InputError("Every score is zero, so the query weight is undefined.")
    return float(scores[np.asarray(idx, dtype=int)].sum() / total)


def marked_spans(
    text: str, *, open: str = "[[", close: str = "]]"
) -> tuple[str, list[tuple[int, int]]]:
    """Remove ``open``/``close`` markers from ``text``; return the clean text and the char
    spans (start, end) of the non-blank marked regions in it."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    i, n_out = 0, 0
    while True:
        a = text.find(open, i)
        if a < 0:
            break
        b = text.find(close, a + len(open))
        if b < 0:
            raise InputError(f"The marker {open!r} at char {a} is never closed with {close!r}.")
        out.append(text[i:a])
        n_out += a - i
        inner = text[a + len(open) : b]
        if open in inner:
            raise InputError(f"Nested {open!r} markers at char {a}; marked regions must not nest.")
        out.append(inner)
        if inner.strip():
            spans.append((n_out, n_out + len(inner)))
        n_out += len(inner)
        i = b + len(close)
    out.append(text[i:])
    return "".join(out), spans


def parse_span(text: str) -> tuple[int, int]:
    """"START:END" -> (START, END) (the CLI's ``--query-span``)."""
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise InputError(f"A span is START:END in chars, e.g. 120:168; got {text!r}.") from None
    return a, b


def locate_query(
    prompt: str,
    query_span: tuple[int, int] | None = None,
    *,
    markers: tuple[str, str] = ("[[", "]]"),
) -> tuple[str, tuple[int, int]]:
    """The prompt the model reads and the query's char span in it.

    query_span: (start, end) into ``prompt``; if None, ``prompt`` must mark exactly one
    region with ``markers`` (they are removed)."""
    text = prompt
    if query_span is not None and markers[0] in prompt and markers[1] in prompt:
        raise InputError(
            f"Give the query as {markers[0]}...{markers[1]} in the prompt or as a span "
            f"(--query-span), not both: with a span the markers would stay in the prompt.")
    if query_span is None:
        text, spans = marked_spans(prompt, open=markers[0], close=markers[1])
        if len(spans) != 1:
            raise InputError(
                f"Mark exactly one query region with {markers[0]}...{markers[1]} or give "
                f"the query span (--query-span START:END); found {len(spans)} marked regions."
            )
        query_span = spans[0]
    a, b = (int(x) for x in query_span)
    if not 0 <= a < b <= len(text):
        raise InputError(f"The query span ({a}, {b}) is outside the prompt (length {len(text)}).")
    return text, (a, b)


@dataclass
class QueryWeight:
    """aqw, the attribution it comes from, the query's features and its span in the
    attribution's input text."""

    aqw: float
    attribution: Attribution
    query_features: list[int]
    query_span: tuple[int, int]

    @property
    def query_text(self) -> str:
        a, b = self.query_span
        return self.attribution.input_text[a:b]


def _locate(attribution: Attribution, text: str) -> int:
    """Where ``text`` starts in the attribution's input text: of its occurrences, the one
    holding the most feature characters (a system prompt or an earlier turn may hold the
    same words unexplained, before the explained copy); 0 without an input text."""
    full = attribution.input_text
    if not full:
        return 0
    starts, at = [], full.find(text)
    while at >= 0:
        starts.append(at)
        at = full.find(text, at + 1)
    if not starts:
        raise InputError("The prompt text could not be located in the attribution's input.")
    spans = [(a, b) for f in attribution.spans for a, b in f]

    def held(s0: int) -> int:
        s1 = s0 + len(text)
        return sum(max(0, min(b, s1) - max(a, s0)) for a, b in spans)

    return max(starts, key=lambda s0: (held(s0), -s0))


def query_weight_of(attribution: Attribution, text: str, span: tuple[int, int]) -> QueryWeight:
    """The query weight of ``attribution`` of prompt ``text`` with the query at ``span``
    (offsets into ``text``; the prompt may sit inside a chat template in the attribution's
    input text)."""
    shift = _locate(attribution, text)
    full = (span[0] + shift, span[1] + shift)
    idx = features_in_span(attribution, full)
    if not idx:
        granularity = attribution.params.get("granularity", "")
        raise InputError(
            f"No {granularity + ' ' if granularity else ''}feature lies inside the query "
            f"span {tuple(span)} ({text[span[0]:span[1]]!r}); use a finer granularity."
        )
    return QueryWeight(query_weight(attribution, idx), attribution, idx, full)


def run_query_weight(
    prompt: str,
    explain: Explain,
    *,
    query_span: tuple[int, int] | None = None,
    markers: tuple[str, str] = ("[[", "]]"),
) -> QueryWeight:
    """Explain ``prompt`` (markers removed) with ``explain`` and return its query weight."""
    text, span = locate_query(prompt, query_span, markers=markers)
    return query_weight_of(explain(text), text, span)
