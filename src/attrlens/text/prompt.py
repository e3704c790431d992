"""Prompts: raw text or chat messages, rendered with the model's template.

A :class:`Prompt` is the exact text the model reads, plus the char spans of it that may be
explained ("regions"). By default only user messages are explainable; the system prompt, the
template's markup and assistant turns are frozen.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError

Message = dict[str, str]

#: the chat roles a message may have (chat templates know no others)
ROLES = ("system", "developer", "user", "assistant", "tool", "function", "ipython")


@dataclass(frozen=True)
class Prompt:
    """Rendered prompt text and its explainable regions.

    text:     the full prompt string the model reads (template included)
    regions:  (start, end) char spans of ``text`` that may become features, in order
    region_messages: for chat prompts, the message index of each region
    messages: the chat messages (None for a raw text prompt)
    chat:     whether a chat template was applied
    content_regions: for chat prompts, the spans of every message's content found in
              ``text`` (explained or not: a system prompt too); what the user wrote, read
              as text when tokenized (:meth:`text_regions`)
    """

    text: str
    regions: tuple[tuple[int, int], ...]
    region_messages: tuple[int, ...] = ()
    messages: tuple[Message, ...] | None = None
    chat: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    content_regions: tuple[tuple[int, int], ...] = ()

    def text_regions(self) -> tuple[tuple[int, int], ...]:
        """The spans of :attr:`text` that the user wrote (every message's content; the
        whole text of a raw prompt): control-token strings there stay text."""
        return tuple(sorted(set(self.regions) | set(self.content_regions)))

    def text_spans(self, spans: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """User-given char spans (offsets into the user's text: the prompt string, or the
        content of the one explainable message of a chat) -> spans of :attr:`text` (the
        rendered prompt, template and system prompt included). The one place where span
        offsets are converted."""
        out: list[tuple[int, int]] = []
        if hasattr(spans, "tolist") and getattr(spans, "ndim", 0) == 2:
            spans = spans.tolist()  # a (k, 2) NumPy array or tensor of offsets
        if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence) or not spans:
            raise InputError(f"Spans must be a non-empty list of (start, end) char offsets, "
                             f"e.g. [(0, 5), (6, 11)]; got {spans!r}.")
        for sp in spans:
            if not isinstance(sp, Sequence) or isinstance(sp, (str, bytes)):
                raise InputError(
                    f"Spans must be a list of (start, end) pairs, e.g. [(0, 5)] for one span; "
                    f"got {spans!r}.")
            if (len(sp) != 2 or not all(isinstance(x, (int, np.integer))
                                        and not isinstance(x, bool) for x in sp)):
                raise InputError(f"A span must be two ints (start, end); got {tuple(sp)!r}.")
            out.append((int(sp[0]), int(sp[1])))
        for (a1, b1), (a2, b2) in itertools.pairwise(sorted(out)):
            if a2 < b1:  # said here, in the user's offsets (below they become the template's)
                raise InputError(f"The spans ({a1}, {b1}) and ({a2}, {b2}) overlap; features "
                                 f"must be disjoint.")
        if not self.chat:
            return out
        if len(self.regions) != 1 or self.messages is None:
            raise InputError(
                f"Span offsets count from the user's text, but this chat has "
                f"{len(self.regions)} explainable messages; give one user message (or a "
                f"text prompt) for --granularity span."
            )
        (a, b), mi = self.regions[0], self.region_messages[0]
        content = self.messages[mi]["content"]
        lead = max(0, content.find(self.text[a:b]))  # a template may strip the content
        shown = (lead, lead + (b - a))
        for s_, e_ in out:
            if not (shown[0] <= s_ < e_ <= shown[1]):
                raise InputError(
                    f"The span ({s_}, {e_}) is outside the user's text (length "
                    f"{len(content)}) or empty; spans are char offsets into the user's text."
                )
        return [(a + s_ - lead, a + e_ - lead) for s_, e_ in out]


def check_text(what: str, text: str) -> str:
    """``text``, or a one-line InputError where it is not valid Unicode (a lone surrogate:
    e.g. bytes that are not UTF-8, read with Python's surrogateescape), which no tokenizer
    takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"The {what} holds invalid Unicode at character {exc.start} (the lone surrogate "
            f"U+{ord(text[exc.start]):04X}, e.g. from bytes that are not UTF-8); give it as "
            f"UTF-8 text."
        ) from None
    return text


def validate_messages(messages: Any) -> tuple[Message, ...]:
    """Check the chat-message list shape; return it as a tuple of plain dicts."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(
            "Chat messages must be a non-empty list of {'role': ..., 'content': ...} dicts."
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(
                f"Chat message {i} must be a dict with 'role' and 'content' keys; got {m!r}."
            )
        if not isinstance(m["role"], str) or not isinstance(m["content"], str):
            raise InputError(f"Chat message {i}: 'role' and 'content' must be strings.")
        check_text(f"content of chat message {i}", m["content"])
        if m["role"] not in ROLES:
            from ..errors import unknown_name_message

            raise InputError(f"Chat message {i} has an unknown role: "
                             + unknown_name_message("role", m["role"], ROLES))
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def check_prompt(
    prompt: Any,
    *,
    chat: bool | None = None,
    spans: Sequence[Sequence[int]] | None = None,
    explain_roles: tuple[str, ...] = ("user",),
) -> None:
    """What can be checked of a prompt without a model (so before one loads): text or
    well-formed messages, something to explain, chat=False only for text, and spans inside
    the user's text (the one explainable message's content)."""
    if isinstance(prompt, str):
        if not check_text("prompt", prompt).strip():
            raise InputError("The prompt is empty: give some text to explain.")
        user = [prompt]
    else:
        messages = validate_messages(prompt)
        if chat is False:
            raise InputError("Chat messages need the chat template: leave out chat=False "
                             "(--raw), or give the prompt as text.")
        user = [m["content"] for m in messages if m["role"] in explain_roles and m["content"]]
        if not any(u.strip() for u in user):
            raise InputError(f"The prompt is empty: no message with role "
                             f"{'/'.join(explain_roles)} has content.")
    if spans is None or len(user) != 1:
        return  # (several explainable messages: refused with the rendered prompt)
    for sp in spans:
        if (isinstance(sp, Sequence) and len(sp) == 2
                and all(isinstance(x, (int, np.integer)) for x in sp)
                and not 0 <= sp[0] < sp[1] <= len(user[0])):
            raise InputError(
                f"The span ({sp[0]}, {sp[1]}) is outside the user's text (length "
                f"{len(user[0])}) or empty; spans are char offsets into the user's text.")


def build_prompt(
    prompt: str | list[Message],
    renderer: Any | None = None,
    *,
    chat: bool | None = None,
    explain_roles: tuple[str, ...] = ("user",),
) -> Prompt:
    """Build a :class:`Prompt` from text or chat messages.

    renderer: an object with ``render_chat(messages) -> str`` and ``has_chat_template``
              (a model backend); None renders raw text only.
    chat:     apply the chat template to a text prompt (default: if the model has one).
    explain_roles: roles whose content is explainable.
    """
    check_prompt(prompt, chat=chat, explain_roles=explain_roles)
    if isinstance(prompt, str):
        if chat is None:
            chat = bool(renderer is not None and getattr(renderer, "has_chat_template", False))
        if not chat:
            return Prompt(text=prompt, regions=((0, len(prompt)),), region_messages=(0,))
        messages: tuple[Message, ...] = ({"role": "user", "content": prompt},)
    else:
        messages = validate_messages(prompt)
    if renderer is None:
        raise InputError("Rendering chat messages needs a model with a chat template.")
    text = renderer.render_chat(list(messages))
    located = _locate_contents(renderer, messages, text)
    regions: list[tuple[int, int]] = []
    owners: list[int] = []
    contents: list[tuple[int, int]] = []
    cursor = located[1] if located[0] is None else 0
    for i, m in enumerate(messages):
        content = m["content"]
        if not content:
            continue
        if located[0] is not None:
            span = located[0][i]
            pos, piece = (-1, content) if span is None else (span[0], text[span[0]:span[1]])
        else:  # the template rewrites some content: search in order, after its first markup
            pos = text.find(content, cursor)
            piece = content
            if pos < 0:  # some templates strip the content
                piece = content.strip()
                pos = text.find(piece, cursor) if piece else -1
        if pos < 0:
            if m["role"] in explain_roles:
                raise InputError(
                    f"The chat template changed the content of message {i} ({m['role']}), so "
                    f"its text cannot be located in the rendered prompt; pass raw text with "
                    f"chat=False instead."
                )
            continue
        cursor = pos + len(piece)
        if piece:
            contents.append((pos, pos + len(piece)))
        if m["role"] in explain_roles and piece.strip():
            regions.append((pos, pos + len(piece)))
            owners.append(i)
    return Prompt(
        text=text,
        regions=tuple(regions),
        region_messages=tuple(owners),
        messages=messages,
        chat=True,
        content_regions=tuple(contents),
    )


def _locate_contents(
    renderer: Any, messages: Sequence[Message], text: str
) -> tuple[list[tuple[int, int] | None] | None, int]:
    """Where each message's content lies in ``text`` (the rendered chat), found by rendering
    the messages again with each content replaced by a unique marker: the markers' places
    are the contents' places, never a match of the content inside the template's own text
    (a user prompt "a" inside "<|im_start|>", or the words of a default system prompt).

    Returns (spans, -1), one (start, end) per message (None: not shown, or empty), when
    putting the contents (as given, or stripped) back at the markers rebuilds ``text``
    exactly; else (None, start), where start is the first marker's place (0 if none), from
    which the caller searches in order."""
    import re

    joined = text + "".join(m["content"] for m in messages)
    k = 0
    while f"ATTRLENS{k}M" in joined:
        k += 1
    marks = [f"ATTRLENS{k}M{i}Q" if m["content"] else "" for i, m in enumerate(messages)]
    try:
        skeleton = renderer.render_chat([{**m, "content": c} for m, c in zip(messages, marks)])
    except InputError:  # a template that checks the content itself: search instead
        return None, 0
    found = [(mt.start(), mt.end(), int(mt.group(1)))
             for mt in re.finditer(rf"ATTRLENS{k}M(\d+)Q", skeleton)]
    start = found[0][0] if found else 0
    if len({i for _, _, i in found}) != len(found):  # a content shown twice: ambiguous
        return None, start
    for strip in (False, True):
        spans: list[tuple[int, int] | None] = [None] * len(messages)
        out, last, at = [], 0, 0
        for a, b, i in found:
            piece = messages[i]["content"].strip() if strip else messages[i]["content"]
            at += a - last  # the template's text before this content
            out += [skeleton[last:a], piece]
            spans[i] = (at, at + len(piece))
            at += len(piece)
            last = b
        out.append(skeleton[last:])
        if "".join(out) == text:
            return spans, -1
    return None, start


def control_token_ids(tok: Any) -> set[int]:
    """The ids of ``tok``'s control tokens: its special tokens (BOS, EOS, ...) and every added
    token marked special (Llama 3's ``<|eot_id|>``, ChatML's ``<|im_end|>``), which a
    tokenizer's ``all_special_ids`` leaves out unless they are named in its config."""
    ids = set(getattr(tok, "all_special_ids", None) or ())
    added = getattr(tok, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, t in added.items() if getattr(t, "special", False))
    return ids


def tokenize_text(
    model: Any,
    text: str,
    regions: Sequence[tuple[int, int]] | None = None,
    *,
    add_special_tokens: bool = False,
    warn: bool = False,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and char offsets of ``text``, with the text inside ``regions`` (the user's
    text; default: all of it) read as text: a control-token string typed there
    (``<|im_end|>``) is split into ordinary tokens, never turned into the control token.
    Template text outside the regions keeps its control tokens. Identical to
    ``model.tokenize`` whenever the user's text holds no control-token string.

    warn: say so (a UserWarning naming the first such string) when it happens: a prompt
    written in the model's chat format (ChatML's ``<|im_start|>``) and passed as raw text
    reaches the model as that text, not as a chat."""
    ids, offsets = model.tokenize(text, add_special_tokens=add_special_tokens)
    tok = getattr(model, "tokenizer", None)
    special = control_token_ids(tok)
    regions = [(0, len(text))] if regions is None else [(int(a), int(b)) for a, b in regions]

    def in_user_text(o: Sequence[int]) -> bool:
        return o[1] > o[0] and any(a < o[1] and o[0] < b for a, b in regions)

    typed = [o for i, o in zip(ids, offsets) if i in special and in_user_text(o)]
    if tok is None or not typed:
        return ids, offsets
    if warn:
        import warnings

        first = text[typed[0][0]:typed[0][1]]
        hint = (" To give the model a chat, pass the messages (--messages FILE, or a list of "
                "messages) and leave out --raw / chat=False." if regions == [(0, len(text))]
                else " The chat template's own control tokens are kept.")
        warnings.warn(
            f"The prompt's text holds the control-token string {first!r} ({len(typed)} in "
            f"all): it is read as plain text, as everything the user writes is, not as the "
            f"model's control token.{hint}", UserWarning, stacklevel=3)

    def encode(piece: str, plain: bool, specials: bool) -> tuple[list[int], list[tuple[int, int]]]:
        return model.tokenize(piece, add_special_tokens=specials, split_special_tokens=plain)

    if regions == [(0, len(text))]:
        return encode(text, True, add_special_tokens)
    pieces: list[tuple[int, int, bool]] = []
    pos = 0
    for a, b in sorted(regions):
        if a > pos:
            pieces.append((pos, a, False))
        pieces.append((a, b, True))
        pos = b
    if pos < len(text):
        pieces.append((pos, len(text), False))

    def encode_after(piece: str, plain: bool) -> tuple[list[int], list[tuple[int, int]]]:
        """``piece`` as it tokenizes after other text: a tokenizer that puts a "▁" before
        every text it is given (SentencePiece's) would put one before each piece; behind a
        newline (dropped with the tokens it gives) the piece starts as inside the whole."""
        got, offs = encode(_SENTINEL + piece, plain, False)
        n = len(_SENTINEL)
        keep = [k for k, (s, e) in enumerate(offs) if e > n]
        if any(offs[k][0] < n for k in keep):  # the newline merged into the piece's token
            return encode(piece, plain, False)
        return [got[k] for k in keep], [(offs[k][0] - n, offs[k][1] - n) for k in keep]

    out_ids: list[int] = []
    out_off: list[tuple[int, int]] = []
    for k, (a, b, plain) in enumerate(pieces):
        got, offs = (encode(text[a:b], plain, add_special_tokens) if k == 0
                     else encode_after(text[a:b], plain))
        out_ids += got
        out_off += [(s + a, e + a) for s, e in offs]
    return out_ids, out_off


#: what :func:`tokenize_text` puts before a piece of text (and drops): a newline, which
#: tokenizes apart from the text after it
_SENTINEL = "\n"


def tokenize_output(
    model: Any,
    prompt_text: str,
    regions: Sequence[tuple[int, int]],
    prompt_ids: Sequence[int],
    output: str,
    *,
    add_special_tokens: bool = False,
) -> list[int]:
    """Token ids of ``output`` as the continuation of the prompt: the tokens that follow the
    prompt's own tokens when prompt and output are tokenized together. A tokenizer that marks
    the start of every text it is given (SentencePiece's "▁" prefix: Llama-2, Mistral) turns
    " Paris" alone into an extra "▁" token and "▁Paris", which no model writes after a prompt;
    together it is "▁Paris". Where the joint tokens do not start with the prompt's (the
    output's first characters merge with the prompt's last token), the output's tokens alone.
    The output is read as text (control-token strings in it stay text)."""
    end = len(prompt_text)
    joint, _ = tokenize_text(model, prompt_text + output,
                             [*map(tuple, regions), (end, end + len(output))],
                             add_special_tokens=add_special_tokens)
    n = len(prompt_ids)
    if len(joint) > n and list(joint[:n]) == list(prompt_ids):
        return list(joint[n:])
    return list(tokenize_text(model, output)[0])
