"""Value function of a closed model: a log-prob difference of two one-token answers.

SPEX's closed-model case study (METHODS.md §3(b), "Closed-model case study") explains a
model behind an API with no surrogate: each perturbed prompt gets one greedy one-token
completion with its top-k log-probs, and

    v(z) = log p(a | x(z)) - log p(b | x(z))        (a, b = the two candidate answers)

read from those top-k log-probs. A candidate missing from the top k gets the floor value
(-100 by default); when both are missing v = 0. Every mask is one API call (cached by the
backend's call cache, so reruns are free); ``Game`` batches masks into ``chat_many`` calls.

Usage::

    game = closed_game(backend, [{"role": "user", "content": "...? Answer True or False."}])
    result = attrlens.explain_game(game, game.n_features, method="spex", budget=2000,
                                   labels=game.labels)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, ParameterError
from ..games import Game
from ..models.routes import answer_logprob
from ..params import check_param
from ..text.mask import mask_spans
from ..text.prompt import validate_messages
from ..text.segment import _label, char_segments

Message = dict[str, str]
_CLOSED_GRANULARITIES = ("word", "sentence", "message", "span")


def answer_logprob_diff(
    top: Mapping[str, float],
    answers: Sequence[str] = ("True", "False"),
    *,
    floor: float = -100.0,
    strip: bool = True,
    case_sensitive: bool = True,
) -> float:
    """log p(answers[0]) - log p(answers[1]) from top-k log-probs; missing -> ``floor``,
    both missing -> 0 (SPEX's closed-model value)."""
    a = answer_logprob(top, answers[0], strip=strip, case_sensitive=case_sensitive)
    b = answer_logprob(top, answers[1], strip=strip, case_sensitive=case_sensitive)
    if a is None and b is None:
        return 0.0
    return (floor if a is None else a) - (floor if b is None else b)


class ClosedValueFunction:
    """masks (m, n) bool -> v(z) (m,) for a chat prompt sent to an OpenAI-compatible backend.

    backend:      ``models.openai.OpenAIBackend`` (or anything with ``chat_many`` returning
                  completions whose ``tokens[0].top`` is {token text: log-prob})
    messages:     chat messages (a str = one user message)
    roles:        roles whose message contents are explainable (default: user)
    granularity:  word | sentence | message | span (``spans``: (start, end) char spans of
                  the content of the single explainable message)
    answers:      the two candidate answers (a, b); v = log p(a) - log p(b)
    top_logprobs: k of the top-k log-probs asked for (OpenAI allows up to 20)
    floor:        log-prob given to a candidate missing from the top k
    masker:       "replace" (a masked feature's text becomes ``mask_text``, whitespace kept;
                  SPEX replaces masked words by a mask string) or "delete" (text removed)
    seed:         sent with each request (servers that honour it are reproducible)
    """

    def __init__(
        self,
        backend: Any,
        messages: Sequence[Message] | str,
        *,
        roles: Sequence[str] = ("user",),
        granularity: str = "word",
        spans: Sequence[tuple[int, int]] | None = None,
        answers: Sequence[str] = ("True", "False"),
        top_logprobs: int = 20,
        floor: float = -100.0,
        masker: str = "replace",
        mask_text: str = "<unk>",
        seed: int | None = None,
        strip: bool = True,
        case_sensitive: bool = True,
    ) -> None:
        owner = "closed_game"
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        self.messages = [dict(m) for m in validate_messages(list(messages))]
        check_param(owner, "granularity", granularity, choices=_CLOSED_GRANULARITIES)
        check_param(owner, "masker", masker, choices=("replace", "delete"))
        check_param(owner, "top_logprobs", top_logprobs, kind=int, low=1)
        check_param(owner, "floor", floor, kind=(int, float))
        if not isinstance(mask_text, str):
            raise ParameterError(
                f"The 'mask_text' parameter of {owner} must be a str. Got {mask_text!r} instead."
            )
        if (
            not isinstance(answers, (list, tuple))
            or len(answers) != 2
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            raise ParameterError(
                f"The 'answers' parameter of {owner} must be two non-empty strings (the answer "
                f"whose log-prob counts positively, then the other). Got {answers!r} instead."
            )
        self.backend = backend
        self.answers = (str(answers[0]), str(answers[1]))
        self.top_logprobs = int(top_logprobs)
        self.floor = float(floor)
        self.masker = masker
        self.mask_text = mask_text
        self.seed = seed
        self.strip = strip
        self.case_sensitive = case_sensitive
        explainable = [i for i, m in enumerate(self.messages) if m["role"] in tuple(roles)]
        if not explainable:
            raise InputError(
                f"No message has an explainable role ({', '.join(roles)}); nothing to explain."
            )
        if granularity == "span" and len(explainable) != 1:
            raise InputError(
                "Span features need exactly one explainable message; pass roles= to pick it."
            )
        # features: (message index, char spans of its content)
        self.features: list[tuple[int, tuple[tuple[int, int], ...]]] = []
        self.labels: list[str] = []
        for mi in explainable:
            content = self.messages[mi]["content"]
            for sps in char_segments(content, [(0, len(content))], granularity, spans=spans):
                self.features.append((mi, sps))
                self.labels.append(_label(content, sps))
        if not self.features:
            raise InputError("The explainable messages are blank; there are no features.")
        self.n_features = len(self.features)
        self._checked = False

    def render(self, mask: np.ndarray) -> list[Message]:
        """The chat messages with the features where ``mask`` is 0 masked."""
        mask = np.asarray(mask, dtype=bool)
        per_msg: dict[int, list[tuple[int, int]]] = {}
        for keep, (mi, sps) in zip(mask, self.features):
            if not keep:
                per_msg.setdefault(mi, []).extend(sps)
        out = [dict(m) for m in self.messages]
        replacement = None if self.masker == "delete" else self.mask_text
        for mi, sps in per_msg.items():
            out[mi]["content"] = mask_spans(out[mi]["content"], sps, replacement=replacement)
        return out

    def value_of(self, top: Mapping[str, float]) -> float:
        return answer_logprob_diff(
            top, self.answers, floor=self.floor, strip=self.strip,
            case_sensitive=self.case_sensitive,
        )

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != self.n_features:
            raise InputError(f"Masks must have shape (n_masks, {self.n_features}); got {masks.shape}.")
        if not self._checked and hasattr(self.backend, "require_logprobs"):
            self.backend.require_logprobs()  # CapabilityError before any paid batch
            self._checked = True
        comps = self.backend.chat_many(
            [self.render(row) for row in masks],
            max_tokens=1,
            temperature=0.0,
            top_logprobs=self.top_logprobs,
            seed=self.seed,
        )
        vals = np.empty(len(masks))
        for r, comp in enumerate(comps):
            top = comp.tokens[0].top if comp.tokens else {}
            vals[r] = self.value_of(top)
        return vals


class ClosedGame(Game):
    """A :class:`Game` over a closed model's one-token answer; ``labels`` names the features
    and ``value_fn`` is the :class:`ClosedValueFunction`."""

    def __init__(
        self,
        value_fn: ClosedValueFunction,
        *,
        batch_size: int | None = 256,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__(value_fn, value_fn.n_features, batch_size=batch_size, progress=progress)
        self.value_fn = value_fn
        self.labels = list(value_fn.labels)


def closed_game(
    backend: Any,
    prompt_messages: Sequence[Message] | str,
    *,
    roles: Sequence[str] = ("user",),
    granularity: str = "word",
    spans: Sequence[tuple[int, int]] | None = None,
    answers: Sequence[str] = ("True", "False"),
    top_logprobs: int = 20,
    floor: float = -100.0,
    masker: str = "replace",
    mask_text: str = "<unk>",
    seed: int | None = None,
    batch_size: int | None = 256,
    progress: Callable[[int, int], None] | None = None,
) -> ClosedGame:
    """A game whose value is log p(answers[0]) - log p(answers[1]) of a closed model's
    one-token completion of the masked prompt (see :class:`ClosedValueFunction`).

    Pass it to ``attrlens.explain_game(game, game.n_features, method="spex", ...,
    labels=game.labels)``; ``game.n_calls`` is the number of distinct prompts sent.
    """
    fn = ClosedValueFunction(
        backend,
        prompt_messages,
        roles=roles,
        granularity=granularity,
        spans=spans,
        answers=answers,
        top_logprobs=top_logprobs,
        floor=floor,
        masker=masker,
        mask_text=mask_text,
        seed=seed,
    )
    return ClosedGame(fn, batch_size=batch_size, progress=progress)
