"""A local surrogate's scores plus a locality kernel's distances (RoPE-LIME).

:class:`LocalityGame` is the teacher-forced :class:`~attrlens.games.model.ScoringGame` of a
local (surrogate) model on a fixed output, seen through a wrapper that also knows how far
each perturbed prompt is from the original: ``locality(masks) -> (m,) distances``, the RWMD
between the RoPE vectors of the original prompt's feature tokens and those of the kept ones
at their original positions (METHODS §1(b) step 4). Distances cost no evaluation; the
scores are the wrapped game's (memo shared with it, so methods prepared together reuse
each other's forwards).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Cost, Game
from .model import ScoringGame


class LocalityGame(Game):
    """The scoring game's values plus ``locality(masks)`` distances.

    space:  RoPE space of the token vectors ('embed_rope' | 'layer0_keys' | 'plain')
    ground_cost: RWMD ground cost ('cosine' | 'euclidean')
    """

    def __init__(self, scoring: ScoringGame, *, space: str = "embed_rope",
                 ground_cost: str = "cosine"):
        from ..models.embeddings import rope_vectors

        super().__init__(None, scoring.n_features, per_token=scoring.per_token,
                         reduce=scoring.reduce)
        self.scoring = scoring
        inputs = scoring.inputs
        self.space = space
        self.ground_cost = ground_cost
        self.masker = inputs.masker
        owner = np.asarray(inputs.features.token_features(), dtype=np.int64)
        #: prompt positions of the feature tokens (the documents' rows)
        self.feature_tokens = np.flatnonzero(owner >= 0)
        ids = np.asarray(inputs.prompt_ids)[self.feature_tokens]
        self.vectors = rope_vectors(inputs.model, ids, self.feature_tokens, space=space)
        cfg = inputs.model.text_config
        self.info: dict[str, Any] = {
            "distance": "rwmd",
            "rwmd_masses": "uniform over feature tokens",
            "rwmd_positions": "original",
            "surrogate": getattr(inputs.model.info, "id", None),
            "rope_theta": getattr(cfg, "rope_theta", None)
            or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta"),
        }

    @property
    def target(self) -> Any:
        return self.scoring.target

    def locality(self, masks: Any) -> np.ndarray:
        """(m,) RWMD of each perturbed prompt to the original (0 for the full mask)."""
        from ..solvers.rwmd import rwmd_many

        masks = self.check_masks(masks)
        keep = self.masker.token_keep(masks)[:, self.feature_tokens]
        return np.asarray(rwmd_many(self.vectors, keep_masks=keep, metric=self.ground_cost),
                          dtype=np.float64)

    def compute(self, masks: np.ndarray) -> list[Any]:
        return self.scoring.evaluate(masks)

    def cost(self) -> Cost:
        c = self.scoring.cost()
        c.value_calls = self.n_calls
        return c
