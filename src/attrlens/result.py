"""Attribution: the one result type of every explainer, and its JSON schema.

Schema ``attrlens.attribution/1`` (documented in docs/result_schema.md). Top-level keys:
schema, method, params, model {id, sha256}, input {text, features [{index, label, spans}]},
output {text, tokens (optional: [{text, start, end, id}])}, scores [n floats; positive =
supports the output], interactions (null or {index, order, terms [{features, value}]}),
per_output_token (null or n x T matrix), cost {model_forwards, tokens_processed, api_calls,
wall_s}, seed, version, and optional extra keys (metadata, warnings, faithfulness, ...).
"""

from __future__ import annotations

import itertools
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


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: numpy -> python, tuples -> lists, non-finite floats -> None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
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


def _is_number(v: Any) -> bool:
    """A JSON number that a float holds (an integer literal of 400 digits does not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        float(v)
    except OverflowError:
        return False
    return True


#: the other kinds of file this version writes, by schema (not attributions)
OTHER_KINDS = {
    "attrlens.comparison/1": "a comparison of two prompts (from attrlens compare)",
    "attrlens.evaluation/1": "the summary of an evaluation run (from attrlens evaluate)",
}


def validate_dict(d: Any, *, source: str = "the data") -> None:
    """Check a result's JSON form against schema ``attrlens.attribution/1``; InputError naming
    the first problem (and where) otherwise. Scores and matrix entries may be null (a
    non-finite value)."""

    def bad(what: str) -> InputError:
        return InputError(f"{source} is not a valid attrlens result: {what}.")

    schema = d.get("schema") if isinstance(d, dict) else None
    if schema in OTHER_KINDS:
        raise InputError(
            f"{source} is {OTHER_KINDS[schema]}, not the attribution of one output: give a "
            f"result of attrlens explain or aqw here ('attrlens show' opens this file).")
    if isinstance(schema, str) and schema.startswith("attrlens.") and schema != SCHEMA:
        # (a file of another attrlens version or kind was called "not an attrlens result")
        raise InputError(
            f"{source} is an attrlens file of schema \"{schema}\", which this version of "
            f"attrlens does not read here (it reads \"{SCHEMA}\"); use the attrlens version "
            f"that wrote it, or upgrade.")
    if not isinstance(d, dict) or schema != SCHEMA:
        raise InputError(
            f"{source} is not an attrlens result (expected \"schema\": \"{SCHEMA}\")."
        )
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise InputError(f"{source} is an incomplete attrlens result: missing {missing}.")
    if not isinstance(d["method"], str) or not d["method"]:
        raise bad("'method' must be a non-empty string")
    for key in ("params", "model", "cost"):
        if d[key] is not None and not isinstance(d[key], dict):
            raise bad(f"'{key}' must be an object")
    inp, out = d["input"], d["output"]
    if not isinstance(inp, dict) or not isinstance(inp.get("features"), list):
        raise bad("'input' must be an object with a 'features' list")
    if not isinstance(inp.get("text", ""), str):
        raise bad("'input.text' must be a string")
    if not isinstance(out, dict) or not isinstance(out.get("text", ""), str):
        raise bad("'output' must be an object with a string 'text'")
    feats = inp["features"]
    if not feats:
        raise bad("the input has no features (empty 'input.features')")
    text_len = len(inp.get("text", ""))
    for i, f in enumerate(feats):
        if not isinstance(f, dict) or not isinstance(f.get("label"), str):
            raise bad(f"feature {i} has no string 'label'")
        if f.get("index", i) != i:
            raise bad(f"feature {i} has index {f.get('index')!r}")
        spans = f.get("spans", [])
        if not isinstance(spans, list):
            raise bad(f"feature {i}: 'spans' must be a list of [start, end]")
        for sp in spans:
            if (not isinstance(sp, list) or len(sp) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in sp)
                    or not 0 <= sp[0] <= sp[1] <= text_len):
                raise bad(f"feature {i} has span {sp!r} outside the input text "
                          f"(0..{text_len})")
    owned = sorted((a, b, i) for i, f in enumerate(feats) for a, b in f.get("spans", [])
                   if b > a)
    for (a1, b1, i1), (a2, _b2, i2) in itertools.pairwise(owned):
        if a2 < b1 and i1 != i2:  # (the schema: features never overlap)
            raise bad(f"features {i1} and {i2} overlap at ({a2}, {b1})")
    n = len(feats)
    scores = d["scores"]
    if not isinstance(scores, list) or not all(s is None or _is_number(s) for s in scores):
        raise bad("'scores' must be a list of numbers (null for non-finite)")
    if len(scores) != n:
        raise InputError(f"{source}: {n} features but {len(scores)} scores.")
    pot = d["per_output_token"]
    if pot is not None:
        if not isinstance(pot, list) or len(pot) != n or not all(
                isinstance(r, list) for r in pot):
            raise bad(f"'per_output_token' must be null or {n} rows (one per feature)")
        widths = {len(r) for r in pot}
        if len(widths) != 1:
            raise bad(f"'per_output_token' is ragged (row lengths {sorted(widths)})")
        if not all(v is None or _is_number(v) for r in pot for v in r):
            raise bad("'per_output_token' must hold numbers (null for non-finite)")
    inter = d["interactions"]
    if inter is not None:
        from .solvers.indices import INDICES

        if not isinstance(inter, dict) or not isinstance(inter.get("terms", []), list):
            raise bad("'interactions' must be null or an object with a 'terms' list")
        if inter.get("index") not in INDICES:
            raise bad(f"'interactions.index' must be one of {', '.join(INDICES)}; got "
                      f"{inter.get('index')!r}")
        for t in inter.get("terms", []):
            idx = t.get("features") if isinstance(t, dict) else None
            if not isinstance(idx, list) or not all(
                    isinstance(j, int) and not isinstance(j, bool) and 0 <= j < n for j in idx):
                raise bad(f"interaction term {t!r} names a feature outside 0..{n - 1}")
            if len(set(idx)) != len(idx):
                raise bad(f"interaction term {t!r} names a feature twice")
            if not (t.get("value") is None or _is_number(t.get("value"))):
                raise bad(f"interaction term {t!r} has a non-numeric value")
    for k, v in (d["cost"] or {}).items():
        if not (v is None or _is_number(v)):
            raise bad(f"cost '{k}' must be a number; got {v!r}")
    if d["seed"] is not None and not (isinstance(d["seed"], int)
                                      and not isinstance(d["seed"], bool)):
        raise bad(f"'seed' must be an integer or null; got {d['seed']!r}")
    if not isinstance(d["version"], str):
        raise bad("'version' must be a string")
    notes = d.get("warnings")
    if notes is not None and not (isinstance(notes, list)
                                  and all(isinstance(w, str) for w in notes)):
        raise bad("'warnings' must be a list of strings")


def _output_tokens(tokens: Any, source: str, text: str) -> list[dict[str, Any]] | None:
    """The optional ``output.tokens`` list, checked: [{text, start, end}], char offsets into
    the output ``text``, in order (0 <= start <= end <= len(text), starts not decreasing)."""
    if tokens is None:
        return None
    ok = isinstance(tokens, list) and all(
        isinstance(t, dict) and isinstance(t.get("text"), str)
        and all(isinstance(t.get(k), int) and not isinstance(t.get(k), bool)
                for k in ("start", "end"))
        and (t.get("id") is None or (isinstance(t["id"], int) and not isinstance(t["id"], bool)
                                     and t["id"] >= 0))
        for t in tokens)
    if not ok:
        raise InputError(f"{source} is not a valid attrlens result: 'output.tokens' must be a "
                         "list of {text, start, end, id (optional)} objects.")
    last = 0
    for j, t in enumerate(tokens):
        if not last <= t["start"] <= t["end"] <= len(text):
            raise InputError(
                f"{source} is not a valid attrlens result: output token {j} has offsets "
                f"({t['start']}, {t['end']}), which are not in order inside the output text "
                f"(0..{len(text)}).")
        last = t["start"]
    return [{"text": t["text"], "start": t["start"], "end": t["end"],
             **({"id": t["id"]} if t.get("id") is not None else {})} for t in tokens]


def read_result_json(path: str | Path) -> Any:
    """The JSON in a result file (InputError with one clear line otherwise: missing, a
    directory, not UTF-8, not JSON, nested too deep to parse)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise InputError(f"The result file '{path}' "
                             f"{'is a directory' if path.is_dir() else 'does not exist'}.")
    except OSError as exc:  # (a name too long for the file system, say)
        raise InputError(f"Could not read the result file '{path}': {exc.strerror}.") from None
    try:
        # NaN / Infinity literals (not JSON, but Python writes them) are read as null, the
        # non-finite value a result is saved as
        # (utf-8-sig: a file re-saved by an editor that writes a byte-order mark)
        return json.loads(path.read_text(encoding="utf-8-sig"), parse_constant=lambda _: None)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"'{path}' is not an attrlens result: it is not JSON ({exc}).") from exc
    except OSError as exc:
        raise InputError(f"Could not read the result file '{path}': {exc}.") from exc


#: the counts every result's cost holds
_COST_KEYS = ("model_forwards", "tokens_processed", "api_calls", "wall_s")


@dataclass(eq=False)  # (identity: field-wise == of numpy arrays has no single truth value)
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
    #: output pieces [{text, start, end}] (char offsets into output_text), one per output
    #: token; labels the columns of per_output_token (None when unknown)
    output_tokens: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        # the shapes are checked when the result is made; the whole schema (what load()
        # would refuse) when it is written (to_json, save)
        self.scores = np.asarray(self.scores, dtype=float)
        if self.scores.ndim != 1:
            raise InputError(f"An attribution's scores are one number per feature (1-D); got "
                             f"shape {self.scores.shape}.")
        if len(self.labels) != len(self.scores):
            raise InputError(
                f"An attribution needs one label per score; got {len(self.labels)} labels "
                f"for {len(self.scores)} scores."
            )
        bad = next((lab for lab in self.labels if not isinstance(lab, str)), None)
        if bad is not None:
            raise InputError(f"An attribution's labels are strings; got {type(bad).__name__} "
                             f"{bad!r}.")
        if self.spans and len(self.spans) != len(self.labels):
            raise InputError(f"An attribution needs the spans of every feature or none; got "
                             f"{len(self.spans)} for {len(self.labels)} features.")
        if self.per_output_token is not None:
            self.per_output_token = np.asarray(self.per_output_token, dtype=float)
            pot = self.per_output_token.shape
            if len(pot) != 2 or pot[0] != len(self.scores):
                raise InputError(
                    f"An attribution's per_output_token is one row per feature and one column "
                    f"per output token ({len(self.scores)} x T); got shape {pot}.")
        if self.interactions is not None and not (
                isinstance(self.interactions, dict)
                and isinstance(self.interactions.get("terms", []), list)):
            raise InputError("An attribution's interactions are None or a dict with a 'terms' "
                             f"list; got {type(self.interactions).__name__}.")
        for k in _COST_KEYS:
            self.cost.setdefault(k, 0)

    @property
    def output_token_ids(self) -> list[int] | None:
        """The token ids of the explained output (None in results without them): pass them
        as ``explain(..., output=...)`` to score the very same tokens again."""
        toks = self.output_tokens
        if not toks or any(t.get("id") is None for t in toks):
            return None
        return [int(t["id"]) for t in toks]

    @property
    def n_features(self) -> int:
        return int(self.scores.shape[0])

    def top_k(self, k: int = 5, *, by: str = "value") -> list[tuple[int, str, float]]:
        """The k features with the largest score (``by="abs"``: largest magnitude)."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InputError(f"top_k needs k >= 1 (an int); got {k!r}.")
        if by not in ("value", "abs"):
            raise InputError(f"top_k orders by 'value' or 'abs'; got {by!r}.")
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
            "output": ({"text": self.output_text} if self.output_tokens is None else
                       {"text": self.output_text, "tokens": self.output_tokens}),
            "scores": self.scores,
            "interactions": self.interactions,
            "per_output_token": self.per_output_token,
            "cost": self.cost,
            "seed": self.seed,
            "version": self.version,
        }
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return json_safe(d)

    def to_json(self, indent: int | None = 2) -> str:
        """The JSON form, checked against the schema first: a result that :meth:`load` (and
        ``attrlens show``) would refuse is refused here, before it is written (InputError
        naming the problem)."""
        d = self.to_dict()
        validate_dict(d, source="This attribution")
        try:
            return json.dumps(d, indent=indent, ensure_ascii=False)
        except (TypeError, ValueError) as exc:  # e.g. a set or an object in ``extra``
            raise InputError(f"This attribution cannot be written as JSON: {exc} (its extra "
                             f"fields must hold JSON values: dicts, lists, strings, numbers, "
                             f"booleans or None).") from None

    def save(self, path: str | Path) -> Path:
        text = self.to_json()  # (checked before anything is created)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "the data") -> Attribution:
        """An Attribution from its JSON form, validated against the schema (InputError with
        the first problem otherwise)."""
        validate_dict(d, source=source)
        feats = d["input"]["features"]
        scores = [np.nan if s is None else s for s in d["scores"]]
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
            per_output_token=None if pot is None else np.asarray(
                [[np.nan if v is None else v for v in row] for row in pot], dtype=float),
            # (a count the file does not hold stays unknown, null; not the 0 of a new result)
            cost={**dict.fromkeys(_COST_KEYS), **dict(d["cost"] or {})},
            seed=d["seed"],
            version=d["version"],
            extra=extra,
            output_tokens=_output_tokens(d["output"].get("tokens"), source,
                                         d["output"].get("text", "")),
        )

    @classmethod
    def load(cls, path: str | Path) -> Attribution:
        return cls.from_dict(read_result_json(path), source=f"'{path}'")

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
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)  # (as save and to_csv do)
            path.write_text(html, encoding="utf-8")
        return html

    def _repr_html_(self) -> str:
        """The report's view sized for a notebook cell."""
        from .report.html import render_fragment

        return render_fragment(self, notebook=True)

    def plot(self, path: str | Path | None = None, **kwargs: Any) -> Any:
        """Bar chart of the scores (matplotlib Figure; saved as PNG/SVG/PDF by suffix)."""
        from .report.plots import plot_scores

        return plot_scores(self, path, **kwargs)

    def plot_matrix(self, path: str | Path | None = None, **kwargs: Any) -> Any:
        """Heatmap of per_output_token (features x output tokens; matplotlib Figure)."""
        from .report.plots import plot_matrix

        return plot_matrix(self, path, **kwargs)

    def to_csv(self, path: str | Path | None = None, *, item: str = "",
               spreadsheet_safe: bool = True) -> str:
        """CSV long form (item, output span, feature, score); written to ``path`` if given."""
        from .report.export import to_csv

        return to_csv(self, path, item=item, spreadsheet_safe=spreadsheet_safe)
