"""Output pieces: the output text cut at token boundaries, with char offsets.

The report labels the columns of the per-output-token matrix with these pieces
(``Attribution.output_tokens``: ``[{"text", "start", "end"}]``, offsets into the output text).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def output_pieces(model: Any, ids: Sequence[int], text: str) -> list[dict[str, Any]]:
    """One ``{"text", "start", "end", "id"}`` per output token id (``len(ids)`` pieces; the
    id says which token was scored, which the text alone may not: see :func:`_pieces`)."""
    ids = [int(i) for i in ids]
    return [{**p, "id": i} for p, i in zip(_pieces(model, ids, text), ids, strict=True)]


def _pieces(model: Any, ids: list[int], text: str) -> list[dict[str, Any]]:
    """One ``{"text", "start", "end"}`` per output token id.

    ``model`` offers ``tokenize(text) -> (ids, offsets)`` and ``decode(ids) -> str``. When the
    text re-tokenizes to exactly ``ids`` the tokenizer's offsets are used; otherwise the
    pieces come from decoding growing prefixes (a token that completes no character, e.g.
    half of a multi-byte character, gets an empty piece and the next one takes the text; an
    output cut inside a character gives its last token the "\ufffd" it decodes to).
    Pieces are contiguous and cover ``text[pieces[0].start:pieces[-1].end]``.
    """
    if not ids:
        return []
    try:
        re_ids, offsets = model.tokenize(text)
    except (TypeError, ValueError, NotImplementedError, KeyError):  # no offsets: decode
        re_ids, offsets = [], []
    if [int(i) for i in re_ids] == ids and len(offsets) == len(ids):
        pieces, cursor = [], 0
        for a, b in offsets:
            # contiguous pieces: a token's leading space belongs to it (offsets may trim it)
            a, b = cursor, max(int(b), cursor)
            pieces.append({"text": text[a:b], "start": a, "end": b})
            cursor = b
        if pieces:
            pieces[-1]["end"] = max(pieces[-1]["end"], len(text))
            pieces[-1]["text"] = text[pieces[-1]["start"]:pieces[-1]["end"]]
        return pieces
    pieces, prev = [], ""
    for k in range(len(ids)):
        cur = model.decode(ids[: k + 1])
        if cur.endswith("\ufffd") or not cur.startswith(prev):
            pieces.append({"text": "", "start": len(prev), "end": len(prev)})
            continue
        pieces.append({"text": cur[len(prev):], "start": len(prev), "end": len(cur)})
        prev = cur
    rest = text[len(prev):] if text.startswith(prev) else ""
    if rest and set(rest) == {"\ufffd"} and pieces and not pieces[-1]["text"]:
        # the output stops inside a character (a length limit cut its bytes): the
        # replacement character it decodes to belongs to the token that ends the text
        pieces[-1] = {"text": rest, "start": len(prev), "end": len(text)}
        return pieces
    if prev != text:  # decoding differs from the output text: map nothing rather than lie
        n = len(text)
        return [{"text": p["text"], "start": min(p["start"], n), "end": min(p["end"], n)}
                for p in pieces]
    return pieces
