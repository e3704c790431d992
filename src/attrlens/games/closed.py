"""Closed-model games: masks -> the closed model's regenerated answers (gSMILE).

:class:`RegenerationGame` sends each perturbed prompt (the masked features' text deleted,
as the same chat messages) to a closed backend (``models.openai.OpenAIBackend``) and keeps
its greedy answer. Like every :class:`Game` it memoises answers per mask, counts distinct
masks (``n_calls``, what a budget bounds) and reports the backend's API and cache calls in
:meth:`RegenerationGame.cost`. Explainers reach the backend only through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..text.mask import TextMasker
from .base import Cost, Game

if TYPE_CHECKING:
    from ..models.embeddings import WordEmbeddings
    from ..models.openai import OpenAIBackend
    from .model import ModelInputs

Message = dict[str, str]


def prefix_order(masks: np.ndarray) -> np.ndarray:
    """Row order that sorts masks lexicographically by feature 0, 1, ... (kept first).

    Prompts sent in this order share the longest text prefixes with their predecessor,
    which servers with a prompt cache (llama.cpp, hosted APIs) do not process again.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.size == 0:
        return np.arange(masks.shape[0])
    # np.lexsort's primary key is the last one: feature 0 must come last
    return np.lexsort([~masks[:, j] for j in range(masks.shape[1] - 1, -1, -1)])


class RegenerationGame(Game):
    """masks -> the closed model's greedy answer (a str) to the perturbed prompt.

    One API call per new mask (``chat_many``, in :func:`prefix_order`; the backend's call
    cache may answer some for free: ``cached_calls``). Values are texts, so ``game(masks)``
    (floats) is refused; use ``game.evaluate(masks)``.

    Read-only helpers for the explainer (no calls): ``original_output`` (the explained
    answer o), ``prompt_texts(masks)`` (the perturbed user text x(z)), ``full_text`` (x),
    ``n_words`` and ``embeddings`` (the word vectors chosen for distances between texts).
    """

    value_kind = "texts"

    def __init__(
        self,
        inputs: ModelInputs,
        backend: OpenAIBackend,
        *,
        embeddings: WordEmbeddings,
        dedup_words: bool = False,
    ):
        super().__init__(None, inputs.n_features)
        self.backend = backend
        self.embeddings = embeddings
        self.dedup_words = bool(dedup_words)
        self.max_new_tokens = int(inputs.max_new_tokens)
        self.original_output = inputs.output_text
        self.chat_progress = inputs.progress
        self.prompts = TextMasker(inputs.prompt, inputs.features)
        self.n_words = self.prompts.n_words
        self.full_text = self.prompts.text(np.ones(inputs.n_features, dtype=bool))
        self.api_calls = 0
        self.cached_calls = 0

    def messages(self, mask: np.ndarray) -> list[Message]:
        """The chat messages sent for one mask."""
        return self.prompts.messages(np.asarray(mask, dtype=bool), dedup_words=self.dedup_words)

    def prompt_texts(self, masks: Any) -> list[str]:
        """The perturbed user text of each mask (the user contents of its messages)."""
        masks = self.check_masks(masks)
        return ["".join(m["content"] for m in self.messages(z) if m["role"] == "user")
                for z in masks]

    def compute(self, masks: np.ndarray) -> list[str]:
        order = prefix_order(masks)
        counters = getattr(self.backend, "counters", None) or {}
        calls0, cached0 = int(counters.get("api_calls", 0)), int(counters.get("cached_calls", 0))
        comps = self.backend.chat_many(
            [self.messages(masks[i]) for i in order],
            max_tokens=self.max_new_tokens,
            temperature=0.0,
            progress=self.chat_progress,
        )
        counters = getattr(self.backend, "counters", None) or {}
        self.api_calls += int(counters.get("api_calls", 0)) - calls0
        self.cached_calls += int(counters.get("cached_calls", 0)) - cached0
        out = [""] * len(masks)
        for i, c in zip(order, comps):
            out[int(i)] = c.text
        return out

    def __call__(self, masks: Any) -> np.ndarray:
        raise InputError(
            "A regeneration game's values are texts; use game.evaluate(masks) to get them."
        )

    def cost(self) -> Cost:
        return Cost(value_calls=self.n_calls, api_calls=self.api_calls,
                    cached_calls=self.cached_calls)

