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
from ..text.prompt import Prompt
from ..text.segment import FeatureSet
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


class PerturbedPrompts:
    """Builds the text of a perturbed prompt from a mask over the features.

    Deletes the masked features' char spans from each explainable region (their leading
    whitespace goes with them, so the remaining text stays well spaced).
    """

    def __init__(self, prompt: Prompt, features: FeatureSet):
        self.prompt = prompt
        self.features = features
        regions = list(prompt.regions)
        self.regions = regions
        # for each region, the (start, end, feature) pieces inside it, in text order
        self._pieces: list[list[tuple[int, int, int]]] = [[] for _ in regions]
        for f in features:
            for a, b in f.spans:
                for ri, (rs, re_) in enumerate(regions):
                    if rs <= a and b <= re_:
                        self._pieces[ri].append((a, b, f.index))
                        break
        for pieces in self._pieces:
            pieces.sort()
        #: (n,) words of each feature (gSMILE's ``min_kept`` counts words)
        self.n_words = np.asarray([len(f.label.split()) for f in features], dtype=np.int64)

    def region_texts(self, keep: np.ndarray) -> list[str]:
        """Text of every explainable region with the features where ``keep`` is False removed."""
        text = self.prompt.text
        out = []
        for (rs, re_), pieces in zip(self.regions, self._pieces):
            parts, cur = [], rs
            for a, b, fi in pieces:
                parts.append(text[cur:a])
                if keep[fi]:
                    parts.append(text[a:b])
                cur = b
            parts.append(text[cur:re_])
            out.append("".join(parts))
        return out

    def text(self, keep: np.ndarray) -> str:
        """The perturbed explainable text (all regions joined)."""
        return "".join(self.region_texts(keep))

    def messages(self, keep: np.ndarray, *, dedup_words: bool = False) -> list[Message]:
        """Chat messages of the perturbed prompt (user content replaced region by region).

        dedup_words: drop repeated words (first occurrence kept), as the gSMILE reference.
        """
        texts = self.region_texts(keep)
        if dedup_words:
            texts = [" ".join(dict.fromkeys(t.split())) for t in texts]
        pr = self.prompt
        if not pr.messages:
            return [{"role": "user", "content": "".join(texts)}]
        msgs = [dict(m) for m in pr.messages]
        for ri, mi in enumerate(pr.region_messages):
            rs, re_ = self.regions[ri]
            original = pr.text[rs:re_]
            content = msgs[mi]["content"]
            # the region is the message content (or its stripped form): swap that part
            at = content.find(original)
            if at < 0:
                msgs[mi]["content"] = texts[ri]
            else:
                msgs[mi]["content"] = content[:at] + texts[ri] + content[at + len(original):]
        return msgs


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
        self.prompts = PerturbedPrompts(inputs.prompt, inputs.features)
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

