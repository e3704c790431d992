"""Maskers: turn masks over features into perturbed token sequences.

A mask is a bool array of shape (n_masks, n_features), 1 = keep. A masker maps each mask
row to the token ids and explicit position ids of the perturbed prompt:

* ``delete``         masked tokens are removed; surviving tokens keep their original
                     position ids (RoPE phases do not shift).
* ``replace``        every masked *feature* becomes one mask token (METHODS.md §0, as in
                     SPEX's reference: a masked sentence is one ``<unk>``, not one per
                     token); positions are contiguous, so the perturbed prompt is exactly the
                     prompt a model would read with the feature's text replaced by the mask
                     token, and the output follows it directly (``output_start``).
* ``replace_tokens`` every masked *token* becomes the mask token; positions unchanged (the
                     perturbed prompt has the original length). Kept as a named option: it
                     is what ``replace`` did before 0.2.
* ``attention_off``  GiLOT's masking (token id 0 and attention 0, positions unchanged). For
                     teacher-forced scoring a key no query may attend to contributes
                     nothing, so the engine runs masked tokens as deletions, except a masked
                     last prompt token: it stays (id 0, ``attention`` 0) because its hidden
                     state predicts the first output token, as in GiLOT's reference.

:class:`TextMasker` is the same masking for routes that send text (regeneration, served
models): the masked features' char spans are deleted from the prompt's text (or chat
messages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, unknown_name_message
from .prompt import Prompt
from .segment import FeatureSet

Message = dict[str, str]

MASKERS = ("delete", "replace", "replace_tokens", "attention_off")


def check_masks(masks: object, n_features: int) -> np.ndarray:
    """Masks as a bool (n_masks, n_features) array (one row may be given as a vector)."""
    masks = np.asarray(masks)
    if masks.ndim == 1:
        masks = masks[None, :]
    if masks.ndim != 2 or masks.shape[1] != n_features:
        raise InputError(f"Masks must have shape (n_masks, {n_features}); got {masks.shape}.")
    return masks.astype(bool)


@dataclass(frozen=True)
class PerturbedInput:
    """Token ids and position ids of one perturbed prompt.

    ids, positions: (L',) int64 arrays
    first_change:   index of the first token that differs from the unmasked prompt (= len
                    when nothing changed); tokens before it equal the unmasked prompt's,
                    at the same positions
    output_start:   position id of the first output token; None = the unmasked prompt's
                    length L (``delete`` keeps that gap, as surviving tokens keep theirs)
    """

    ids: np.ndarray
    positions: np.ndarray
    first_change: int
    output_start: int | None = None
    #: (L',) 0 = no query attends to this token's key (attention_off's masked last token,
    #: id 0, which still predicts the first output token); None = all attended
    attention: np.ndarray | None = None


class Masker:
    """Applies masks to one tokenized prompt. ``kind`` is one of MASKERS.

    prompt_ids: (L,) token ids; features: the FeatureSet built on that tokenization;
    mask_token_id: the id used by ``replace`` / ``replace_tokens``.
    empty_context_id: the one token ``delete`` feeds, at position 0, when a mask removes
    every prompt token (the output is still predicted from a token; the model's BOS, else
    EOS: ``HFModel.empty_context_id``); None refuses such a mask.
    """

    def __init__(
        self,
        kind: str,
        prompt_ids: np.ndarray | list[int],
        features: FeatureSet,
        *,
        mask_token_id: int = 0,
        empty_context_id: int | None = None,
    ):
        if kind not in MASKERS:
            raise InputError(unknown_name_message("masker", kind, MASKERS))
        self.kind = kind
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        self.features = features
        self.mask_token_id = int(mask_token_id)
        self.empty_context_id = None if empty_context_id is None else int(empty_context_id)
        self.n_features = len(features)
        # token -> feature index (-1 frozen), as an array for vectorised masking
        self.owner = np.asarray(features.token_features(), dtype=np.int64)
        if self.owner.shape[0] != self.prompt_ids.shape[0]:
            raise InputError("The feature set was built for a different tokenization.")

    def check(self, masks: np.ndarray) -> np.ndarray:
        return check_masks(masks, self.n_features)

    def token_keep(self, masks: np.ndarray) -> np.ndarray:
        """(n_masks, n_tokens) bool: which prompt tokens are kept under each mask."""
        masks = self.check(masks)
        keep = np.ones((masks.shape[0], self.owner.shape[0]), dtype=bool)
        feat_tok = self.owner >= 0
        keep[:, feat_tok] = masks[:, self.owner[feat_tok]]
        return keep

    def apply(self, masks: np.ndarray) -> list[PerturbedInput]:
        """One :class:`PerturbedInput` per mask row."""
        keep = self.token_keep(masks)
        n_tok = self.prompt_ids.shape[0]
        pos = np.arange(n_tok)
        out = []
        for row in keep:
            dropped = np.flatnonzero(~row)
            first = int(dropped[0]) if dropped.size else n_tok
            if self.kind == "replace_tokens":
                ids = np.where(row, self.prompt_ids, self.mask_token_id)
                out.append(PerturbedInput(ids, pos, first))
            elif self.kind == "replace":
                out.append(self._replace_features(row, first))
            elif self.kind == "attention_off" and not row[-1]:
                # the masked last token (id 0, attention 0) still predicts o_1 (GiLOT's code)
                ids = np.append(self.prompt_ids[row], 0)
                att = np.ones(len(ids), dtype=np.int64)
                att[-1] = 0
                out.append(PerturbedInput(ids, np.append(pos[row], n_tok - 1), first,
                                          attention=att))
            elif not row.any():
                out.append(self._empty_context())
            else:
                out.append(PerturbedInput(self.prompt_ids[row], pos[row], first))
        return out

    def generation_ids(self, pert: PerturbedInput) -> np.ndarray:
        """The token ids to generate from after ``pert``: its tokens without those no query
        attends to (attention_off's masked last token, id 0, which ``generate`` would read
        as a real token), or the empty context's one token when none is left."""
        ids = np.asarray(pert.ids, dtype=np.int64)
        if pert.attention is not None:
            ids = ids[np.asarray(pert.attention) != 0]
        return ids if ids.size else self._empty_context().ids

    def _empty_context(self) -> PerturbedInput:
        """``delete`` with every prompt token masked: one context token at position 0 (an
        empty sequence has no position to predict the first output token from), the output
        at its unmasked positions."""
        if self.empty_context_id is None:
            raise InputError(
                "A mask removes every token of the prompt and the model has no BOS or EOS "
                "token to stand for the empty context; freeze part of the prompt (a chat "
                "template, spans) or use the replace masker."
            )
        return PerturbedInput(np.asarray([self.empty_context_id], dtype=np.int64),
                              np.zeros(1, dtype=np.int64), 0,
                              output_start=int(self.prompt_ids.shape[0]))

    def _replace_features(self, keep: np.ndarray, first: int) -> PerturbedInput:
        """One mask token in place of each maximal run of masked tokens of one feature;
        positions 0..L'-1 and the output right after (L')."""
        if first == keep.shape[0]:
            n = keep.shape[0]
            return PerturbedInput(self.prompt_ids, np.arange(n), n)
        ids: list[int] = []
        prev_owner = -2
        for t, kept in enumerate(keep):
            if kept:
                ids.append(int(self.prompt_ids[t]))
                prev_owner = -2
            elif self.owner[t] != prev_owner:  # the first masked token of a feature's run
                ids.append(self.mask_token_id)
                prev_owner = int(self.owner[t])
        arr = np.asarray(ids, dtype=np.int64)
        return PerturbedInput(arr, np.arange(arr.shape[0]), first, output_start=arr.shape[0])


def mask_spans(
    text: str,
    spans: Sequence[tuple[int, int]],
    *,
    replacement: str | None = None,
    start: int = 0,
    end: int | None = None,
) -> str:
    """``text[start:end]`` with each char span (absolute offsets, non-overlapping) deleted
    (``replacement=None``) or replaced by ``replacement`` with the span's own leading and
    trailing whitespace kept, so words stay separated; blank spans stay as they are."""
    end = len(text) if end is None else end
    parts, cur = [], start
    for a, b in sorted(spans):
        parts.append(text[cur:a])
        piece = text[a:b]
        if replacement is not None and piece.strip():
            lead = piece[: len(piece) - len(piece.lstrip())]
            trail = piece[len(piece.rstrip()):]
            parts.append(lead + replacement + trail)
        elif replacement is not None:
            parts.append(piece)
        cur = b
    parts.append(text[cur:end])
    return "".join(parts)


class TextMasker:
    """The masker for text routes (regeneration, served models): the text of a perturbed
    prompt from a mask over the features.

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
        return [
            mask_spans(text, [(a, b) for a, b, fi in pieces if not keep[fi]], start=rs, end=re_)
            for (rs, re_), pieces in zip(self.regions, self._pieces)
        ]

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
