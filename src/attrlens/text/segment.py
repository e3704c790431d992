"""Segmenters: split the explainable regions of a prompt into features.

Every feature is a set of char spans of the prompt text and the indices of the prompt tokens
that fall in them. Invariants (checked by property tests): features never overlap, together
they cover exactly the non-blank explainable regions, and keeping every feature reproduces
the input.

Whitespace belongs to the feature that follows it (a word feature is " word", matching
byte-level BPE tokens such as "Ġword"); trailing whitespace of a region goes to its last
feature.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InputError, unknown_name_message

GRANULARITIES = ("token", "word", "sentence", "message", "span")

# Chinese and Japanese are written without spaces between words: without a dictionary, each
# ideograph or kana is a word there (with the full-width punctuation after it), and features
# that share one token are merged by ``segment`` (a token of two characters is one feature);
# every other script's words are its runs of non-space characters
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_PUNCT = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
_WORD = re.compile(rf"[{_CJK}][{_CJK_PUNCT}]*|[^\s{_CJK}]+")
# a sentence ends at . ! ? (or runs of them, or an ellipsis), optionally followed by closing
# quotes/brackets, and then whitespace; at a full-width end mark (。！？, Chinese and
# Japanese, written without a space after it) with or without whitespace; a line break also
# ends a sentence
_CLOSERS = "\"'\u2019\u201d)\\]\u300d\u300f\uff09\u3011"
_SENT_END = re.compile(
    # (Arabic question mark and full stop, Devanagari danda and double danda too)
    rf"(?:[.!?\u2026\u3002\uff01\uff1f\u061f\u06d4\u0964\u0965]+[{_CLOSERS}]*(?=\s|$))"
    rf"|(?:[\u3002\uff01\uff1f]+[{_CLOSERS}]*)|\n")

# a full stop after these does not end a sentence: titles and Latin abbreviations, which
# stand before more of the same sentence ("Dr. Smith", "e.g. apples", "Fig. 3")
_NO_END_AFTER = frozenset([
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "rev", "gen", "gov", "sen",
    "rep", "capt", "lt", "col", "sgt", "mt", "ft", "vs", "e.g", "i.e", "cf", "viz",
    "al", "approx", "ca", "dept", "est",
])
# ... and these only before a number ("Fig. 3", "No. 5"; "he said no. Fine")
_BEFORE_NUMBER = frozenset([
    "fig", "figs", "eq", "eqs", "no", "nos", "vol", "pp", "p", "sec", "ch",
])
# ... and these end one only before a capital letter ("etc. The", "Inc. Its", "U.S.A. He";
# "Acme Inc. and", "5 p.m. on Friday" go on)
_END_BEFORE_CAPITAL = frozenset([
    "etc", "inc", "ltd", "co", "corp", "bros", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "sept", "oct", "nov", "dec",
])
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]$")  # U.S.A, e.g, p.m (before the last dot)


def _combining_only(piece: str) -> bool:
    """Whether ``piece`` is marks only (Unicode categories Mn, Mc, Me: an accent written
    after its letter, a Devanagari vowel sign): it belongs to the character before it, never
    a feature of its own."""
    import unicodedata

    return bool(piece) and all(unicodedata.category(c).startswith("M") for c in piece)


def _is_regional(c: str) -> bool:
    return "\U0001f1e6" <= c <= "\U0001f1ff"


def _joins_previous(text: str, a: int, b: int) -> bool:
    """Whether the token at ``text[a:b]`` continues the character cluster before it, so
    that no feature boundary may fall at ``a``: combining marks only; a zero-width joiner,
    variation selector, emoji skin-tone modifier or tag character first; the character
    after a joiner (the parts of a family emoji); the second half of a flag (a pair of
    regional indicators)."""
    if a <= 0 or b <= a:
        return False
    first, prev = text[a], text[a - 1]
    if _combining_only(text[a:b]) or prev == "\u200d":
        return True
    if (first in "\u200d\ufe0e\ufe0f" or "\U0001f3fb" <= first <= "\U0001f3ff"
            or "\U000e0020" <= first <= "\U000e007f"):
        return True
    if _is_regional(first) and _is_regional(prev):
        run = 0
        while a - 1 - run >= 0 and _is_regional(text[a - 1 - run]):
            run += 1
        return run % 2 == 1
    return False


def _ends_sentence(chunk: str, m: re.Match[str]) -> bool:
    """Whether the end mark ``m`` ends a sentence: no end mark before a lower-case word
    ('"Stop!" she cried', "thinking... maybe"); a single full stop after an abbreviation,
    a single initial ("J. Smith") or a list number ("1. Preheat", "Steps: 2. Bake") does
    not either. A line break always does."""
    if m.group() == "\n":
        return True
    after = chunk[m.end():].lstrip()
    nxt = after[:1]
    # (a sentence seldom starts lower-case: "e.g. apples", "approx. two"; after a
    # full-width end mark, Latin text is another sentence of a mixed text)
    if nxt.islower() and not re.search("[\u3002\uff01\uff1f]", m.group()):
        return False
    if m.group() != ".":
        return True
    word = re.search(r"[^\s(\[\"'“]*$", chunk[: m.start()]).group()
    if re.fullmatch(r"\d{1,3}", word):
        # a list number: first on its line, or after a colon or another sentence's end
        before = chunk[: m.start() - len(word)].rstrip(" \t")
        if not before or before.endswith(("\n", ":")):
            return False
        prev = next((p for p in _SENT_END.finditer(chunk) if p.end() == len(before)), None)
        if prev is not None and prev.group() != "\n" and _ends_sentence(chunk, prev):
            return False  # ("Open it. 2. Close it."; not "No. 5. He", whose "No." goes on)
    key = word.lower()
    if key in _NO_END_AFTER or (len(word) == 1 and word.isupper()):
        return False
    if key in _BEFORE_NUMBER and nxt.isdigit():
        return False
    if key in _END_BEFORE_CAPITAL or _INITIALISM.search(word):
        return nxt.isupper()
    return True


@dataclass(frozen=True)
class Feature:
    """One explainable unit: label, char spans of the prompt text, prompt token indices."""

    index: int
    label: str
    spans: tuple[tuple[int, int], ...]
    tokens: tuple[int, ...]

    def to_json(self) -> dict:
        return {"index": self.index, "label": self.label, "spans": [list(s) for s in self.spans]}


@dataclass(frozen=True)
class FeatureSet:
    """Immutable, ordered set of non-overlapping features of one prompt."""

    features: tuple[Feature, ...]
    granularity: str
    n_tokens: int
    #: span features snapped to token boundaries (``segment(..., snap_spans=True)``): the
    #: spans whose shared token went to a neighbour ("moved"), the spans merged into the
    #: feature holding their only token ("merged"), and each given span's feature index
    #: ("feature_of_span"); None when the spans were taken as given
    snapped: dict | None = None

    def __len__(self) -> int:
        return len(self.features)

    def __iter__(self):
        return iter(self.features)

    def __getitem__(self, i: int) -> Feature:
        return self.features[i]

    @property
    def labels(self) -> list[str]:
        return [f.label for f in self.features]

    def token_features(self) -> list[int]:
        """For each prompt token, the index of its feature or -1 (frozen)."""
        owner = [-1] * self.n_tokens
        for f in self.features:
            for t in f.tokens:
                owner[t] = f.index
        return owner


def _spread(region: tuple[int, int], cuts: list[int]) -> list[tuple[int, int]]:
    """Spans [cuts[i], cuts[i+1]) within region, the first starting at the region start."""
    s, e = region
    bounds = [s] + [c for c in cuts if s < c < e] + [e]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _word_spans(text: str, region: tuple[int, int]) -> list[tuple[int, int]]:
    s, e = region
    words = [(m.start() + s, m.end() + s) for m in _WORD.finditer(text[s:e])]
    if not words:
        return []
    # each feature = leading whitespace + word; trailing whitespace joins the last one
    return _spread(region, [w[1] for w in words[:-1]])


def _sentence_spans(text: str, region: tuple[int, int]) -> list[tuple[int, int]]:
    s, e = region
    chunk = text[s:e]
    cuts: list[int] = []
    for m in _SENT_END.finditer(chunk):
        # the next sentence (with its leading whitespace) begins after the end mark; a line
        # break is whitespace, so it begins with the break (a break token such as "\n   "
        # then lies in the sentence it starts, as its characters do)
        if chunk[m.end():].strip() and _ends_sentence(chunk, m):
            cuts.append(s + (m.start() if m.group() == "\n" else m.end()))
    spans = _spread(region, sorted(set(cuts)))
    # blank-only pieces (e.g. runs of newlines) join the following sentence
    merged: list[tuple[int, int]] = []
    carry: int | None = None
    for a, b in spans:
        if not text[a:b].strip():
            carry = a if carry is None else carry
            continue
        merged.append((carry if carry is not None else a, b))
        carry = None
    if carry is not None and merged:
        merged[-1] = (merged[-1][0], e)
    return merged


def char_segments(
    text: str,
    regions: Sequence[tuple[int, int]],
    granularity: str,
    *,
    offsets: Sequence[tuple[int, int]] | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
) -> list[tuple[tuple[int, int], ...]]:
    """Char spans of each feature (a tuple of spans per feature), in text order.

    offsets: token char offsets (needed for ``granularity="token"``).
    spans:   user-given (start, end) spans of ``text`` (for ``granularity="span"``).
    """
    if granularity not in GRANULARITIES:
        raise InputError(unknown_name_message("granularity", granularity, GRANULARITIES))
    regions = [r for r in regions if text[r[0]:r[1]].strip()]
    out: list[tuple[tuple[int, int], ...]] = []
    if granularity == "word":
        for r in regions:
            out.extend((sp,) for sp in _word_spans(text, r))
    elif granularity == "sentence":
        for r in regions:
            out.extend((sp,) for sp in _sentence_spans(text, r))
    elif granularity == "message":
        out = [(r,) for r in regions]
    elif granularity == "token":
        if offsets is None:
            raise InputError("Token granularity needs the token offsets.")
        for r in regions:
            s, e = r
            cuts = []
            reach = s  # the furthest character the tokens so far cover
            blank_from = None  # start of a run of blank-only tokens
            for a, b in offsets:
                if b <= a or b <= s or a >= e:
                    continue
                a, b = max(a, s), min(b, e)
                if a < reach or (a == reach and cuts and _joins_previous(text, a, b)):
                    # a byte-level token sharing a character with the tokens before it
                    # (the last bytes of an emoji or accented letter), or one that
                    # continues its character cluster (the accent of "e" + U+0301, a
                    # joined emoji, a skin tone, a flag's second letter): no boundary here
                    reach = max(reach, b)
                    continue
                if text[a:b].strip():  # a run of blank-only tokens joins the next token
                    cuts.append(a if blank_from is None else blank_from)
                    blank_from = None
                elif blank_from is None:
                    blank_from = a
                reach = b
            pieces = _spread(r, cuts[1:]) if cuts else []
            out.extend((p,) for p in pieces)
    else:  # span
        if not spans:
            raise InputError("Span granularity needs at least one (start, end) span.")
        cleaned = []
        for sp in spans:
            if len(sp) != 2 or not all(isinstance(x, int) for x in sp):
                raise InputError(f"A span must be two ints (start, end); got {sp!r}.")
            a, b = sp
            if not (0 <= a < b <= len(text)):
                raise InputError(
                    f"The span ({a}, {b}) is outside the text (length {len(text)}) or empty."
                )
            if not any(rs <= a and b <= re_ for rs, re_ in regions):
                raise InputError(
                    f"The span ({a}, {b}) is not inside an explainable region of the prompt."
                )
            cleaned.append((a, b))
        cleaned.sort()
        for (a1, b1), (a2, _) in itertools.pairwise(cleaned):
            if a2 < b1:
                raise InputError(f"The spans overlap at ({a2}, {b1}); features must be disjoint.")
        out = [(sp,) for sp in cleaned]
    return out


def assign_tokens(
    feature_spans: Sequence[tuple[tuple[int, int], ...]],
    offsets: Sequence[tuple[int, int]],
    regions: Sequence[tuple[int, int]] | None = None,
) -> list[tuple[int, ...]]:
    """Token indices of each feature: a token goes to the feature it overlaps most. With
    ``regions``, a token reaching outside every region stays frozen (no feature): "\n " made
    of the chat template's newline and the user's leading space was masked with the first
    word, deleting template text."""
    flat = sorted((a, b, fi) for fi, sps in enumerate(feature_spans) for a, b in sps)
    starts = [a for a, _, _ in flat]
    owned: list[list[int]] = [[] for _ in feature_spans]
    for ti, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        if regions is not None and not any(rs <= a and b <= re_ for rs, re_ in regions):
            continue
        j = max(0, bisect.bisect_right(starts, a) - 1)
        best, best_fi = 0, -1
        while j < len(flat) and flat[j][0] < b:
            fa, fb, fi = flat[j]
            ov = min(b, fb) - max(a, fa)
            if ov > best:
                best, best_fi = ov, fi
            j += 1
        if best_fi >= 0:
            owned[best_fi].append(ti)
    return [tuple(t) for t in owned]


def _spans_on_tokens(
    text: str,
    fspans: Sequence[tuple[tuple[int, int], ...]],
    tokens: Sequence[tuple[int, ...]],
    offsets: Sequence[tuple[int, int]],
    shift: int = 0,
) -> list[tuple[tuple[int, int], ...]]:
    """Span features as the text their tokens cover: a feature is masked by whole tokens, so
    a span ending inside a token is widened to that token's ends (its label and spans then
    say what is masked). A span whose tokens all belong to its neighbours, or two spans
    sharing a token, cannot be masked apart: refused, naming the token (offsets in the
    messages less ``shift``: the user's own, not the chat-rendered text's)."""
    out: list[tuple[tuple[int, int], ...]] = []
    given = (0, 0)  # the previous span as the user gave it

    def user(a: int, b: int) -> tuple[int, int]:
        return (a - shift, b - shift)

    held = {t for toks in tokens for t in toks}
    for sps, toks in zip(fspans, tokens):
        (a, b), = sps
        outside = [(ta, tb) for t, (ta, tb) in enumerate(offsets)
                   if ta < b and tb > a and tb > ta and t not in held]
        if not toks and outside:
            ta, tb = outside[0]
            raise InputError(
                f"The span {user(a, b)} {text[a:b]!r} lies in the token {text[ta:tb]!r} at "
                f"{user(ta, tb)}, which reaches outside the text that can be explained (into "
                f"the chat template or text before the user's), so it stays as it is; "
                f"spans are masked by whole tokens: widen the span or move it.")
        if not toks:
            raise InputError(
                f"The span {user(a, b)} {text[a:b]!r} lies inside tokens that other spans "
                f"hold more of, so it cannot be masked on its own; spans are masked by whole "
                f"tokens: widen it or move its neighbours' ends."
            )
        lo = min([a] + [offsets[t][0] for t in toks])
        hi = max([b] + [offsets[t][1] for t in toks])
        if out and out[-1][0][1] > lo:
            pb = out[-1][0][1]
            ta, tb = next(o for o in offsets if o[0] < pb and o[1] > lo and o[1] > o[0])
            raise InputError(
                f"The spans {user(*given)} and {user(a, b)} both fall in the "
                f"token {text[ta:tb]!r} at {user(ta, tb)}; spans are masked by whole tokens, "
                f"so put the boundary between them at a token boundary."
            )
        out.append(((lo, hi),))
        given = (a, b)
    return out


def _snap_spans(
    text: str,
    fspans: Sequence[tuple[tuple[int, int], ...]],
    tokens: Sequence[tuple[int, ...]],
    offsets: Sequence[tuple[int, int]],
    shift: int = 0,
) -> tuple[list[tuple[tuple[int, int], ...]], list[tuple[int, ...]], dict]:
    """Span features moved to token boundaries (for spans a program derived, e.g. a data
    set's sentences, not spans a user wrote): a token two spans share stays with the span
    holding more of it (``assign_tokens``) and the neighbour's boundary moves to that token's
    edge; a span lying wholly inside its neighbour's token joins that neighbour's feature.
    Returns the spans, their tokens, and what was changed (offsets less ``shift``: in the
    given text): {"moved": [{"spans", "token", "token_at", "to"}], "merged": [{"span",
    "into"}], "feature_of_span": [feature index of each given span]}. A span whose token
    reaches outside the explainable text is still refused."""
    def user(a: int, b: int) -> list[int]:
        return [a - shift, b - shift]

    owner = {t: i for i, toks in enumerate(tokens) for t in toks}
    keep: list[int] = []
    bounds: dict[int, list[int]] = {}
    into: dict[int, int] = {}
    for i, (sps, toks) in enumerate(zip(fspans, tokens)):
        (a, b), = sps
        if not toks:
            over = [(min(b, tb) - max(a, ta), t) for t, (ta, tb) in enumerate(offsets)
                    if ta < b and tb > a and tb > ta]
            held = [(ov, t) for ov, t in over if t in owner]
            if not held:
                _spans_on_tokens(text, [sps], [toks], offsets, shift)  # refused: says why
                raise InputError(f"The span {tuple(user(a, b))} {text[a:b]!r} has no token.")
            into[i] = owner[max(held)[1]]
            continue
        keep.append(i)
        bounds[i] = [min([a] + [offsets[t][0] for t in toks]),
                     max([b] + [offsets[t][1] for t in toks])]
    moved = []
    for j, i in itertools.pairwise(keep):
        if bounds[j][1] <= bounds[i][0]:
            continue
        last, first = max(tokens[j]), min(tokens[i])
        edge = offsets[first][0]
        if offsets[last][1] > edge:  # the two spans' tokens overlap (bytes of one character)
            _spans_on_tokens(text, [fspans[j], fspans[i]], [tokens[j], tokens[i]], offsets,
                             shift)
        # the shared text lies between j's last token and i's first: the token holding it
        # went to one of them (assign_tokens), its edge is the boundary
        shared = [t for t in range(last, first + 1)
                  if offsets[t][1] > offsets[t][0]
                  and offsets[t][0] < bounds[j][1] and offsets[t][1] > bounds[i][0]]
        tok = shared[0] if shared else first
        to = owner.get(tok, i)
        edge = offsets[tok][1] if to == j else offsets[tok][0]
        bounds[j][1], bounds[i][0] = edge, edge
        moved.append({"spans": [j, i], "token": text[offsets[tok][0]:offsets[tok][1]],
                      "token_at": user(*offsets[tok]), "to": to})
    index = {i: k for k, i in enumerate(keep)}
    feature_of_span = [index[i] if i in index else index[into[i]] for i in range(len(fspans))]
    info = {"moved": moved,
            "merged": [{"span": i, "into": t} for i, t in sorted(into.items())],
            "feature_of_span": feature_of_span}
    out_spans = [((bounds[i][0], bounds[i][1]),) for i in keep]
    out_tokens = [tuple(tokens[i]) for i in keep]
    return out_spans, out_tokens, info


def _label(text: str, spans: tuple[tuple[int, int], ...]) -> str:
    raw = " ".join(text[a:b] for a, b in spans).strip()
    return re.sub(r"\s+", " ", raw) if raw else repr(text[spans[0][0]:spans[-1][1]])


def _off_frozen_edges(
    text: str,
    spans: list[tuple[int, int]],
    offsets: Sequence[tuple[int, int]],
    starts: list[int],
    owned: set[int],
) -> list[tuple[int, int]]:
    """A feature's spans without the blank edges that a frozen token holds: a template's
    token may reach into the text ("\n " before "  Hello" in a chat turn); masking the
    feature leaves that blank in place, so the feature does not claim it."""
    out = []
    for a, b in spans:
        i = bisect.bisect_right(starts, a) - 1  # the token starting at or before a
        if i >= 0 and i not in owned and starts[i] < a < offsets[i][1] <= b \
                and not text[a:offsets[i][1]].strip():
            a = offsets[i][1]
        j = bisect.bisect_left(starts, b) - 1  # the token starting before b
        if j >= 0 and j not in owned and a <= starts[j] < b < offsets[j][1] \
                and not text[starts[j]:b].strip():
            b = starts[j]
        out.append((a, b))
    return [sp for sp in out if sp[1] > sp[0]] or spans


def segment(
    text: str,
    regions: Sequence[tuple[int, int]],
    offsets: Sequence[tuple[int, int]],
    granularity: str = "word",
    *,
    spans: Sequence[tuple[int, int]] | None = None,
    shift: int = 0,
    snap_spans: bool = False,
) -> FeatureSet:
    """Segment the explainable regions of ``text`` into a :class:`FeatureSet`. ``shift``:
    where the user's text starts in ``text`` (span errors give the user's offsets).
    ``snap_spans``: spans two of which share a token are moved to a token boundary (and a
    span inside a neighbour's token joins it) instead of refused; for spans derived by a
    program (a data set's sentences), never for spans the user wrote (see
    :func:`_snap_spans`; what moved is in the FeatureSet's ``snapped``)."""
    if granularity == "span" and spans and not snap_spans:
        # feature k is the k-th span: a user pairing their spans with the scores needs them
        # in text order (they were sorted silently, so scores went with the wrong spans)
        for (a1, b1), (a2, b2) in itertools.pairwise(spans):
            if (a2, b2) < (a1, b1):
                raise InputError(
                    f"Give the spans in text order (feature k is the k-th span): "
                    f"({a2 - shift}, {b2 - shift}) comes after ({a1 - shift}, {b1 - shift}); "
                    f"sort them by start.")
    fspans = char_segments(text, regions, granularity, offsets=offsets, spans=spans)
    tokens = assign_tokens(fspans, offsets, regions)
    snapped = None
    if granularity == "span" and snap_spans:
        fspans, tokens, snapped = _snap_spans(text, fspans, tokens, offsets, shift)
    elif granularity == "span":  # the user's spans, widened to the tokens that are masked
        fspans = _spans_on_tokens(text, fspans, tokens, offsets, shift)
    # a feature no token was assigned to (its text shares one token with a neighbour)
    # cannot be masked on its own: merge it into the feature holding that token
    merged_spans: list[list[tuple[int, int]]] = []
    merged_tokens: list[list[int]] = []
    for sps, toks in zip(fspans, tokens):
        if not toks and merged_spans:
            merged_spans[-1].extend(sps)
        elif not toks:
            merged_spans.append(list(sps))
            merged_tokens.append([])
        else:
            if merged_tokens and not merged_tokens[-1]:
                merged_spans[-1].extend(sps)
                merged_tokens[-1].extend(toks)
            else:
                merged_spans.append(list(sps))
                merged_tokens.append(list(toks))
    feats = []
    owned = {t for toks in merged_tokens for t in toks}
    starts = [o[0] for o in offsets]
    for sps, toks in zip(merged_spans, merged_tokens):
        if not toks:
            continue
        sps = sorted(_off_frozen_edges(text, sps, offsets, starts, owned))
        # adjacent spans of one feature become one span
        joined: list[tuple[int, int]] = []
        for a, b in sps:
            if joined and joined[-1][1] == a:
                joined[-1] = (joined[-1][0], b)
            else:
                joined.append((a, b))
        feats.append(
            Feature(len(feats), _label(text, tuple(joined)), tuple(joined), tuple(sorted(toks)))
        )
    if not feats:
        raise InputError(
            f"Segmentation at granularity '{granularity}' found no features in the explainable "
            f"text; the prompt may be blank or only template. Try another granularity."
        )
    return FeatureSet(tuple(feats), granularity, len(offsets), snapped)
