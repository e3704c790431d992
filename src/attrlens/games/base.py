"""Game: the one contract between models and attribution algorithms.

A game maps a bool matrix of masks (n_masks, n_features), 1 = keep, to one value per mask.
Any plain callable with that signature is a game; :class:`Game` wraps it with a memo of seen
masks, a count of value-function evaluations (``n_calls``), batching and progress reporting.
Typed games (per-output-token matrices, beam distances, regenerated texts) subclass it and
override :meth:`Game.compute`.

An explainer never sees a game directly: the base class's ``explain`` hands it a
:class:`BudgetedGame`, a view that counts the distinct masks the method asks for and refuses
(as a bug) any request beyond the method's budget. Cost counters are one typed record,
:class:`Cost`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import AttrlensError, InputError
from ..text.mask import check_masks

ValueFn = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]


class BudgetExceededError(AttrlensError):
    """A method asked for more value-function evaluations than its budget (a bug in it)."""

    exit_code = 1


@dataclass
class Cost:
    """What one explanation cost. ``value_calls`` is what ``budget`` bounds."""

    value_calls: int = 0
    model_forwards: int = 0
    tokens_processed: int = 0
    padded_tokens: int = 0
    #: batches that ran out of device memory and were halved and run again
    oom_retries: int = 0
    api_calls: int = 0
    cached_calls: int = 0
    wall_s: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                       for f in fields(self)})

    def __sub__(self, other: Cost) -> Cost:
        return Cost(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                       for f in fields(self)})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Game:
    """A memoised, counted value function over feature coalitions.

    fn:          masks (m, n) bool -> values (m,) float (or (m, T) per-token matrix when
                 ``per_token=True``; the value is then ``reduce(matrix)``)
    n_features:  n
    batch_size:  masks per call of ``fn`` (None = all at once)
    progress:    callback(done, total): (0, total) when a call starts computing its new
                 masks, then after every batch (and within one, see :meth:`report_partial`)
    """

    #: what one value is: "scalar" (float), "per_token" ((T,) row reduced to a float), or a
    #: typed game's own kind ("texts", "beam_distances", ...)
    value_kind: str = "scalar"
    #: what to do about NaN or inf values or scores (a model's game: its dtype)
    nonfinite_hint: str = ("it must return finite numbers (too large a value overflows "
                           "float64 sums: rescale it, e.g. divide by its largest value)")

    def __init__(
        self,
        fn: ValueFn | None,
        n_features: int,
        *,
        batch_size: int | None = None,
        progress: Progress | None = None,
        per_token: bool = False,
        reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        if not isinstance(n_features, (int, np.integer)) or isinstance(n_features, bool) or (
            n_features < 1
        ):
            raise InputError(f"A game needs at least one feature; got n_features={n_features!r}.")
        self.fn = fn
        self.n_features = int(n_features)
        self.batch_size = batch_size
        self.progress = progress
        self._partial = (0, 0)  # (masks before the batch computing now, masks of the call)
        self.per_token = per_token
        if per_token:
            self.value_kind = "per_token"
        self.reduce = reduce or (lambda m: m.mean(-1))
        self._memo: dict[bytes, Any] = {}
        self.n_calls = 0  # distinct masks evaluated by fn

    @staticmethod
    def key(row: np.ndarray) -> bytes:
        return np.packbits(row).tobytes()

    def check_masks(self, masks: Any) -> np.ndarray:
        return check_masks(masks, self.n_features)

    def compute(self, masks: np.ndarray) -> list[Any]:
        """The values of new masks (one per row); typed games override this."""
        got = self.fn(masks)
        if type(got).__module__.startswith("torch") and hasattr(got, "detach"):
            # a tensor: numpy reads no bfloat16 (it was "values that are not numbers")
            t = got.detach().cpu()
            got = (t.double() if t.is_floating_point() else t).numpy()
        try:
            raw = np.asarray(got)
        except (TypeError, ValueError):  # (ragged rows: refused below)
            raw = None
        if raw is not None and np.iscomplexobj(raw):
            raise InputError("The value function returned complex numbers; it must return "
                             "real values (e.g. np.abs(v) or v.real, whichever is meant).")
        first = None  # the first text value ("0.5" read as 0.5 and "nan" as a value: text
        if raw is not None and raw.dtype.kind in "USO":  # is not a measurement)
            first = next((x for x in raw.ravel() if isinstance(x, (str, bytes))), None)
        if first is not None:
            raise InputError(f"The value function returned text ({str(first)!r}) for "
                             f"{len(masks)} masks; it must return numbers (convert them "
                             f"with float() where the text is a number).")
        try:
            vals = np.asarray(got, dtype=float)
        except (TypeError, ValueError):
            vals = None
        if self.per_token:  # one row of per-output-token values per mask
            ok = vals is not None and vals.ndim == 2 and vals.shape[0] == len(masks) and (
                vals.shape[1] >= 1)
            want = f"one row of per-token values per mask (shape ({len(masks)}, T))"
        else:
            ok = vals is not None and vals.ndim in (1, 2) and vals.shape[0] == len(masks) and (
                vals.ndim == 1 or vals.shape[1] == 1)
            want = f"one number per mask (shape ({len(masks)},))"
        if not ok:
            shape = ("values that are not numbers" if vals is None
                     else f"an array of shape {vals.shape}")
            raise InputError(
                f"The value function returned {shape} ({type(got).__name__}) for "
                f"{len(masks)} masks; it must return {want}.")
        if raw is not None and raw.dtype.kind == "O" and any(x is None for x in raw.ravel()):
            raise InputError(f"The value function returned None for some of the {len(masks)} "
                             f"masks; it must return a number for every mask.")
        if not np.all(np.isfinite(vals)):
            raise InputError(f"The value function returned NaN or inf; {self.nonfinite_hint}.")
        return list(vals) if self.per_token else list(vals.reshape(len(masks)))

    def new_masks(self, masks: np.ndarray) -> list[bytes]:
        """Keys of the rows of ``masks`` not yet in the memo (distinct, in order)."""
        out: dict[bytes, None] = {}
        for row in masks:
            k = self.key(row)
            if k not in self._memo:
                out[k] = None
        return list(out)

    def evaluate(self, masks: Any) -> list[Any]:
        """Raw values (memoised) of the masks, one per row."""
        masks = self.check_masks(masks)
        keys = [self.key(r) for r in masks]
        todo: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in self._memo and k not in todo:
                todo[k] = i
        if todo:
            new = masks[list(todo.values())]
            new_keys = list(todo)
            bs = self.batch_size or len(new)
            if self.progress is not None:  # shown from the start, not after the first batch
                self.progress(0, len(new))
            for s in range(0, len(new), bs):
                chunk = new[s : s + bs]
                self._partial = (s, len(new))
                vals = self.compute(chunk)
                if len(vals) != len(chunk):
                    raise InputError(
                        f"The game returned {len(vals)} values for {len(chunk)} masks."
                    )
                for k, v in zip(new_keys[s : s + bs], vals):
                    self._memo[k] = v
                self.n_calls += len(chunk)
                if self.progress is not None:
                    self.progress(min(s + bs, len(new)), len(new))
        return [self._memo[k] for k in keys]

    def report_partial(self, done: int) -> None:
        """Progress inside one batch: ``done`` of its masks are computed (a game whose
        :meth:`compute` works in steps, such as the scoring engine's forwards, calls this)."""
        start, total = self._partial
        if self.progress is not None and total:
            self.progress(min(start + done, total), total)

    def __call__(self, masks: Any) -> np.ndarray:
        """Values (m,) of the masks (memoised)."""
        out = self.evaluate(masks)
        if self.per_token:
            return np.asarray([float(self.reduce(np.asarray(v))) for v in out])
        return np.asarray(out, dtype=float).reshape(len(out))

    def per_token_values(self, masks: Any) -> np.ndarray:
        """(m, T) per-output-token values (games built with ``per_token=True``)."""
        if not self.per_token:
            raise InputError("This game has no per-output-token values.")
        return np.stack([np.asarray(v) for v in self.evaluate(masks)])

    def cost(self) -> Cost:
        """Cost counters so far (typed games add their model's counters)."""
        return Cost(value_calls=self.n_calls)

    @property
    def full(self) -> np.ndarray:
        return np.ones(self.n_features, dtype=bool)


class BudgetedGame:
    """A view of a game that allows at most ``budget`` distinct masks (None = unbounded).

    Masks already asked for through this view are free again (memo); masks another method
    evaluated on the shared game still count here, so a method's cost does not depend on
    what ran before it. ``n_calls`` = distinct masks this view asked for.
    """

    def __init__(self, game: Game, budget: int | None, *, owner: str = "this method"):
        self.game = game
        self.budget = budget
        self.owner = owner
        self._asked: set[bytes] = set()

    @property
    def n_features(self) -> int:
        return self.game.n_features

    @property
    def n_calls(self) -> int:
        return len(self._asked)

    @property
    def per_token(self) -> bool:
        return self.game.per_token

    @property
    def value_kind(self) -> str:
        return self.game.value_kind

    @property
    def full(self) -> np.ndarray:
        return self.game.full

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.n_calls

    def _charge(self, masks: Any) -> np.ndarray:
        masks = self.game.check_masks(masks)
        fresh = {Game.key(r) for r in masks} - self._asked
        if self.budget is not None and len(self._asked) + len(fresh) > self.budget:
            raise BudgetExceededError(
                f"internal error: {self.owner} asked for {len(self._asked) + len(fresh)} "
                f"value-function evaluations with a budget of {self.budget}. Please report it."
            )
        self._asked |= fresh
        return masks

    def __call__(self, masks: Any) -> np.ndarray:
        return self.game(self._charge(masks))

    def evaluate(self, masks: Any) -> list[Any]:
        return self.game.evaluate(self._charge(masks))

    def per_token_values(self, masks: Any) -> np.ndarray:
        return self.game.per_token_values(self._charge(masks))

    def __getattr__(self, name: str) -> Any:
        # typed games' read-only helpers (e.g. a locality kernel); never their evaluations
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.game, name)


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
