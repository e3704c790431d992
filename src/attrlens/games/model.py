"""Model inputs of one explanation and the teacher-forced scoring game built on them.

:class:`ModelInputs` is everything the API prepares before a method runs (model, prompt,
features, tokenized prompt, explained output, masker); model-based methods build their
typed game from it (``Explainer.make_game``). :class:`ScoringGame` is the default game:
masks -> per-output-token target values of the fixed output under the masked prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..models.hf import HFModel
from ..scoring.engine import ScoringEngine
from ..scoring.targets import Target
from ..text.mask import Masker
from ..text.prompt import Prompt
from ..text.segment import FeatureSet
from .base import Cost, Game

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelInputs:
    """One prepared explanation: what is explained, of which model, split into features.

    prompt_ids:  (L,) token ids of the rendered prompt (template included)
    offsets:     char offsets of those tokens in ``prompt.text``
    output_ids:  (T,) token ids of the explained output (T >= 1)
    masker:      the masker chosen for this run (delete | replace | attention_off)
    max_new_tokens: generation length used for the output (and by regenerating methods)
    prefix_reuse: whether scoring shares the unmasked prompt's key/value cache
    generated:   the output is the model's answer (max_new_tokens made it), not a given one
    """

    model: HFModel
    prompt: Prompt
    prompt_ids: np.ndarray
    offsets: tuple[tuple[int, int], ...]
    features: FeatureSet
    output_ids: np.ndarray
    output_text: str
    masker: Masker
    max_new_tokens: int = 32
    prefix_reuse: bool = True
    progress: Progress | None = None
    generated: bool = True

    @property
    def n_features(self) -> int:
        return len(self.features)


class ScoringGame(Game):
    """masks -> (T,) per-output-token target values of the fixed output (teacher forced).

    The scalar value of a mask is the target's aggregate (mean or sum over T). Cost counts
    the scoring engines' forwards and tokens.
    """

    nonfinite_hint = ("the model overflows in its dtype (its activations or gradients): "
                      "load it in float32 (--dtype float32) or bfloat16")

    def __init__(
        self,
        inputs: ModelInputs,
        target: Target,
        *,
        engines: tuple[ScoringEngine, ...],
        batch_size: int = 256,
    ):
        self.inputs = inputs
        self.target = target
        self.engines = engines
        masker = inputs.masker
        super().__init__(
            lambda masks: target.per_token(masker.apply(masks)),
            inputs.n_features,
            per_token=True,
            reduce=(lambda m: m.sum(-1)) if target.reduction == "sum" else (lambda m: m.mean(-1)),
            progress=inputs.progress,
            batch_size=batch_size,
        )

    def compute(self, masks: np.ndarray) -> list[np.ndarray]:
        # progress after each forward: the engines' inputs scored, averaged over the engines
        # (a contrastive target runs two on the same masks)
        done = [0] * len(self.engines)

        def step(i: int, k: int) -> None:
            done[i] = k
            self.report_partial(sum(done) // len(done))

        for i, e in enumerate(self.engines):
            e.on_progress = (lambda k, _n, i=i: step(i, k)) if self.progress else None
        try:
            vals = np.asarray(self.fn(masks), dtype=float)
        finally:
            for e in self.engines:
                e.on_progress = None
        if not np.all(np.isfinite(vals)):
            from ..errors import InputError

            raise InputError(
                "The model gave NaN or inf scores; load it in float32 (--dtype float32)."
            )
        return list(vals)

    def cost(self) -> Cost:
        c = Cost(value_calls=self.n_calls)
        for e in self.engines:
            c.model_forwards += int(e.counters["model_forwards"])
            c.tokens_processed += int(e.counters["tokens_processed"])
            c.padded_tokens += int(e.counters.get("padded_tokens", 0))
            c.oom_retries += int(e.counters.get("oom_retries", 0))
        return c
