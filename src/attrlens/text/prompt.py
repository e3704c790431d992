"""Prompts: raw text or chat messages, rendered with the model's template.

A :class:`Prompt` is the exact text the model reads, plus the char spans of it that may be
explained ("regions"). By default only user messages are explainable; the system prompt, the
template's markup and assistant turns are frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

Message = dict[str, str]


@dataclass(frozen=True)
class Prompt:
    """Rendered prompt text and its explainable regions.

    text:     the full prompt string the model reads (template included)
    regions:  (start, end) char spans of ``text`` that may become features, in order
    region_messages: for chat prompts, the message index of each region
    messages: the chat messages (None for a raw text prompt)
    chat:     whether a chat template was applied
    """

    text: str
    regions: tuple[tuple[int, int], ...]
    region_messages: tuple[int, ...] = ()
    messages: tuple[Message, ...] | None = None
    chat: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


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
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


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
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError("The prompt is empty: give some text to explain.")
        if chat is None:
            chat = bool(renderer is not None and getattr(renderer, "has_chat_template", False))
        if not chat:
            return Prompt(text=prompt, regions=((0, len(prompt)),), region_messages=(0,))
        messages = ({"role": "user", "content": prompt},)
    else:
        messages = validate_messages(prompt)
        if chat is False:
            raise InputError("Chat messages need the chat template; do not pass chat=False.")
    if renderer is None:
        raise InputError("Rendering chat messages needs a model with a chat template.")
    if not any(m["content"].strip() for m in messages if m["role"] in explain_roles):
        raise InputError(
            f"The prompt is empty: no message with role {'/'.join(explain_roles)} has content."
        )
    text = renderer.render_chat(list(messages))
    regions: list[tuple[int, int]] = []
    owners: list[int] = []
    cursor = 0
    for i, m in enumerate(messages):
        content = m["content"]
        if not content:
            continue
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
        if m["role"] in explain_roles and piece.strip():
            regions.append((pos, pos + len(piece)))
            owners.append(i)
    return Prompt(
        text=text,
        regions=tuple(regions),
        region_messages=tuple(owners),
        messages=messages,
        chat=True,
    )
