"""Attribution: the one result type of every explainer, and its JSON schema.

Schema ``attrlens.attribution/1`` (documented in docs/result_schema.md). Top-level keys:
schema, method, params, model {id, sha256}, input {text, features [{index, label, spans}]},
output {text}, scores [n floats; positive = supports the output], interactions (null or
{index, order, terms [{features, value}]}), per_output_token (null or n x T matrix),
cost {model_forwards, tokens_processed, api_calls, wall_s}, seed, version, and optional
extra keys (metadata, warnings, ...).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

SCHEMA = "attrlens.attribution/1"
REQUIRED_KEYS = (
    "schema", "method", "params", "model", "input", "output", "scores",
    "interactions", "per_output_token", "cost", "seed", "version",
)


def _version() -> str:
    from . import __version__

    return __version__


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy -> python, tuples -> lists, non-finite floats -> None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass
class Attribution:
    """Scores per feature (positive = supports the output), with provenance and cost."""

    method: str
    scores: np.ndarray
    labels: list[str]
    spans: list[list[list[int]]] = field(default_factory=list)
    input_text: str = ""
    output_text: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=lambda: {"id": None, "sha256": None})
    interactions: dict[str, Any] | None = None
    per_output_token: np.ndarray | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    version: str = field(default_factory=_version)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=float)
        if len(self.labels) != len(self.scores):
            raise InputError(
                f"An attribution needs one label per score; got {len(self.labels)} labels "
                f"for {len(self.scores)} scores."
            )
        for k in ("model_forwards", "tokens_processed", "api_calls", "wall_s"):
            self.cost.setdefault(k, 0)

    @property
    def n_features(self) -> int:
        return int(self.scores.shape[0])

    def top_k(self, k: int = 5, *, by: str = "value") -> list[tuple[int, str, float]]:
        """The k features with the largest score (``by="abs"``: largest magnitude)."""
        key = np.abs(self.scores) if by == "abs" else self.scores
        order = np.argsort(-key, kind="stable")[:k]
        return [(int(i), self.labels[i], float(self.scores[i])) for i in order]

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": SCHEMA,
            "method": self.method,
            "params": self.params,
            "model": self.model,
            "input": {
                "text": self.input_text,
                "features": [
                    {"index": i, "label": lab, "spans": self.spans[i] if self.spans else []}
                    for i, lab in enumerate(self.labels)
                ],
            },
            "output": {"text": self.output_text},
            "scores": self.scores,
            "interactions": self.interactions,
            "per_output_token": self.per_output_token,
            "cost": self.cost,
            "seed": self.seed,
            "version": self.version,
        }
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return _clean(d)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "the data") -> "Attribution":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise InputError(
                f"{source} is not an attrlens result (expected \"schema\": \"{SCHEMA}\")."
            )
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise InputError(f"{source} is an incomplete attrlens result: missing {missing}.")
        feats = d["input"].get("features", [])
        scores = [np.nan if s is None else s for s in d["scores"]]
        if len(feats) != len(scores):
            raise InputError(f"{source}: {len(feats)} features but {len(scores)} scores.")
        pot = d.get("per_output_token")
        extra = {k: v for k, v in d.items() if k not in REQUIRED_KEYS}
        return cls(
            method=d["method"],
            scores=np.asarray(scores, dtype=float),
            labels=[f["label"] for f in feats],
            spans=[f.get("spans", []) for f in feats],
            input_text=d["input"].get("text", ""),
            output_text=d["output"].get("text", ""),
            params=d["params"] or {},
            model=d["model"] or {},
            interactions=d["interactions"],
            per_output_token=None if pot is None else np.asarray(pot, dtype=float),
            cost=dict(d["cost"] or {}),
            seed=d["seed"],
            version=d["version"],
            extra=extra,
        )

    @classmethod
    def load(cls, path: str | Path) -> "Attribution":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"The result file '{path}' does not exist.")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"'{path}' is not an attrlens result: it is not JSON ({exc}).") from exc
        return cls.from_dict(d, source=f"'{path}'")

    # ---- display -------------------------------------------------------------------------
    def show(self, *, top: int = 10, console: Any = None) -> None:
        """Print the coloured attribution, the output, a top-k table and the cost."""
        from .report.terminal import render

        render(self, top=top, console=console)

    def to_html(self, path: str | Path | None = None) -> str:
        """A self-contained HTML report (written to ``path`` if given)."""
        from .report.html import render_html

        html = render_html(self)
        if path is not None:
            Path(path).write_text(html, encoding="utf-8")
        return html
