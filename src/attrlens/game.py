"""Game: the one contract between models and attribution algorithms.

A game maps a bool matrix of masks (n_masks, n_features), 1 = keep, to one value per mask.
Any plain callable with that signature is a game; :class:`Game` wraps it with a memo of seen
masks, a count of value-function evaluations (``n_calls``, what ``budget`` bounds), batching
and progress reporting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import InputError
from .text.mask import check_masks

ValueFn = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]


class Game:
    """A memoised, counted value function over feature coalitions.

    fn:          masks (m, n) bool -> values (m,) float (or (m, T) per-token matrix when
                 ``per_token=True``; the value is then ``reduce(matrix)``)
    n_features:  n
    batch_size:  masks per call of ``fn`` (None = all at once)
    progress:    callback(done, total) called after every batch
    """

    def __init__(
        self,
        fn: ValueFn,
        n_features: int,
        *,
        batch_size: int | None = None,
        progress: Progress | None = None,
        per_token: bool = False,
        reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        if not isinstance(n_features, (int, np.integer)) or n_features < 1:
            raise InputError(f"A game needs at least one feature; got n_features={n_features!r}.")
        self.fn = fn
        self.n_features = int(n_features)
        self.batch_size = batch_size
        self.progress = progress
        self.per_token = per_token
        self.reduce = reduce or (lambda m: m.mean(-1))
        self._memo: dict[bytes, Any] = {}
        self.n_calls = 0  # distinct masks evaluated by fn
        self.n_requests = 0  # masks asked for, memo hits included

    def _key(self, row: np.ndarray) -> bytes:
        return np.packbits(row).tobytes()

    def check_masks(self, masks: Any) -> np.ndarray:
        return check_masks(masks, self.n_features)

    def _evaluate(self, masks: np.ndarray) -> list[Any]:
        masks = self.check_masks(masks)
        self.n_requests += len(masks)
        keys = [self._key(r) for r in masks]
        todo: dict[bytes, int] = {}
        for k, i in zip(keys, range(len(keys))):
            if k not in self._memo and k not in todo:
                todo[k] = i
        if todo:
            idx = list(todo.values())
            new = masks[idx]
            bs = self.batch_size or len(new)
            done = 0
            for s in range(0, len(new), bs):
                chunk = new[s : s + bs]
                vals = np.asarray(self.fn(chunk), dtype=float)
                if vals.shape[0] != len(chunk):
                    raise InputError(
                        f"The value function returned {vals.shape[0]} values for "
                        f"{len(chunk)} masks; it must return one value per mask."
                    )
                if not np.all(np.isfinite(vals)):
                    raise InputError(
                        "The value function returned NaN or inf; check the model's precision "
                        "(try dtype float32) or the target."
                    )
                for j, k in enumerate(list(todo)[s : s + bs]):
                    self._memo[k] = vals[j]
                self.n_calls += len(chunk)
                done += len(chunk)
                if self.progress is not None:
                    self.progress(done, len(new))
        return [self._memo[k] for k in keys]

    def __call__(self, masks: Any) -> np.ndarray:
        """Values (m,) of the masks (memoised)."""
        out = self._evaluate(masks)
        if self.per_token:
            return np.asarray([float(self.reduce(np.asarray(v))) for v in out])
        return np.asarray(out, dtype=float).reshape(len(out))

    def per_token_values(self, masks: Any) -> np.ndarray:
        """(m, T) per-output-token values (games built with ``per_token=True``)."""
        if not self.per_token:
            raise InputError("This game has no per-output-token values.")
        return np.stack([np.asarray(v) for v in self._evaluate(masks)])

    @property
    def full(self) -> np.ndarray:
        return np.ones(self.n_features, dtype=bool)


def as_game(fn: ValueFn | Game, n_features: int, **kwargs: Any) -> Game:
    """Wrap a plain callable as a :class:`Game` (a Game is returned unchanged)."""
    if isinstance(fn, Game):
        if fn.n_features != n_features:
            raise InputError(
                f"The game has {fn.n_features} features but n_features={n_features} was given."
            )
        return fn
    if not callable(fn):
        raise InputError("A game must be a callable masks -> values.")
    return Game(fn, n_features, **kwargs)
