"""``attrlens.evaluate``: run methods over a data set, score them, and aggregate, resumably.

One *record* = one explanation (item × method with its parameters × model × seed) with its
metric values. Records are computed independently of each other (each one prepares its own
games), so a record's numbers do not depend on what ran before it, or on whether the run was
resumed (in bf16 they depend on torch's thread count, which the key holds: Ray's actors
run one thread each); they are appended to ``DIR/records.jsonl`` as they finish
(:mod:`.store`) and a rerun skips them. The summary (``DIR/summary.json`` and
``DIR/summary.md``) holds, per method and metric, the mean over items with a 95% bootstrap
CI, the same per n-feature bin (8-15, 16-31, 32-63, 64-127, SPEX), and paired Wilcoxon
tests between methods. Each record's attribution is saved under ``DIR/attributions/``.

Metrics (names for ``metrics=``):

================  =============================================================================
morf, lerf, abpc  fixed-output perturbation curves (METHODS §5.3): AUC of the mean-NLL change
                  of the explained output, features masked by the evaluation masker
morf_regen, ...   the same with greedy regeneration and 100·(1-cos) of MiniLM embeddings
                  (``lerf_regen``, ``abpc_regen``; GiLOT's variant)
r2                faithfulness R² on uniform test masks (§5.2; surrogate or calibrated) on the
                  method's own target
topk              mean over r = 1..10 of the top-k removal change Δ_r (§5.4)
lds               ContextCite's linear datamodeling score: Spearman ρ between Σ_i s_i z_i and
                  the method's own target on ``n_lds`` held-out ablations (keep-prob. 1/2)
auroc, r_precision, recall_at_2, recall_at_5, mrr
                  supporting-feature recovery against the item's gold features (§5.5)
================  =============================================================================

Model-call cache: within one item, what does not depend on the method is computed once and
shared by the item's methods: the explained output (greedy generation), the values of the
method-independent mask sets (R² test and calibration masks, LDS ablations; per target and
masker, each set scored in one call on a fresh game, so a value never depends on which method
asked first, on batching, or on a resume), and the regenerations of the regenerate curves.
The explainers' own games, the MoRF/LeRF masks and the top-k sets (method-specific) are
scored on fresh games per record. So sharing changes no number: ``share_cache=False`` gives
bit-identical records with more model calls.

Reports: each record's attribution page is written to ``DIR/items/`` and ``DIR/index.html``
links them (``report=False`` skips both).

Backends: ``local`` (in process, the default) and ``ray`` (an actor pool of ``workers``
actors, each loading the model once; a local Ray, or a cluster by ``address``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import CapabilityError, InputError, ParameterError, unknown_name_message
from ..games import Game
from ..models.base import runtime_environment
from ..params import check_param, check_seed
from ..result import _version, json_safe
from .datasets import EvalItem, load_items
from .store import ResultsStore, record_key

if TYPE_CHECKING:
    from ..models.hf import HFModel

CURVE_METRICS = ("morf", "lerf", "abpc")
REGEN_METRICS = ("morf_regen", "lerf_regen", "abpc_regen")
GOLD_METRICS = ("auroc", "r_precision", "recall_at_2", "recall_at_5", "mrr")
#: metrics of a method on its own game (its target and masker, unless target= and
#: method_masker= fix them for all): methods whose games differ are not compared by them
OWN_GAME_METRICS = ("r2", "topk", "lds")
METRICS = CURVE_METRICS + REGEN_METRICS + OWN_GAME_METRICS + GOLD_METRICS
EVAL_MASKERS = ("attention_off", "delete", "replace")
BINS = ((8, 15), (16, 31), (32, 63), (64, 127))
BACKENDS = ("local", "ray")


def bin_label(n: int) -> str:
    """The n-feature bin of an item ("8-15", ..., "<8", ">=128")."""
    for lo, hi in BINS:
        if lo <= n <= hi:
            return f"{lo}-{hi}"
    return "<8" if n < BINS[0][0] else f">={BINS[-1][1] + 1}"


@dataclass(frozen=True)
class MethodSpec:
    """A method name and its parameters (as given; defaults are filled by the explainer)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={v}" for k, v in self.params) + ")"


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_methods(methods: Sequence[str | tuple[str, dict[str, Any]] | MethodSpec] | str
                  ) -> list[MethodSpec]:
    """Method specs from names, (name, params) pairs, or a CLI string
    ``"loo,lime:num_samples=64,kernel_shap:budget=128"`` (``:key=value`` per parameter, values
    read as JSON where they parse)."""
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    elif isinstance(methods, MethodSpec):
        methods = [methods]
    elif not isinstance(methods, (list, tuple)):
        raise ParameterError(
            f"methods must be a list of method names (or (name, params) pairs), or a "
            f"comma-separated string; got {type(methods).__name__}.")
    out: list[MethodSpec] = []
    for m in methods:
        if isinstance(m, MethodSpec):
            out.append(m)
        elif isinstance(m, str):
            name, *kvs = m.strip().split(":")
            params = {}
            for kv in kvs:
                if "=" not in kv:
                    raise ParameterError(
                        f"Method parameter {kv!r} in {m!r} is not key=value; write e.g. "
                        f"lime:num_samples=64."
                    )
                k, v = (x.strip() for x in kv.split("=", 1))
                if k in params:  # the last one won silently
                    raise ParameterError(
                        f"The parameter {k!r} is given twice in {m!r}; give it once."
                    )
                if k == "budget":  # as --budget reads it (an int, or none: the default)
                    from ..explainers.base import BUDGET

                    params[k] = BUDGET.parse_cli(v)
                else:
                    params[k] = _parse_value(v)
            out.append(MethodSpec(name.strip(), tuple(sorted(params.items()))))
        elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str) and isinstance(
            m[1], dict
        ):
            out.append(MethodSpec(m[0], tuple(sorted(m[1].items()))))
        else:
            raise ParameterError(
                f"A method must be a name or a (name, params) pair; got {m!r}."
            )
    if not out:
        raise ParameterError("No methods given; name at least one (e.g. methods=['loo']).")
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise ParameterError(f"A method is listed twice: {labels}.")
    return out


def parse_metrics(metrics: Sequence[str] | str) -> tuple[str, ...]:
    """Metric names (a list or a comma-separated string), checked against METRICS."""
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    elif not isinstance(metrics, (list, tuple)):
        raise ParameterError(
            f"metrics must be a list of metric names or a comma-separated string (from "
            f"{', '.join(METRICS)}); got {type(metrics).__name__}.")
    out = []
    for m in metrics:
        if m not in METRICS:
            raise ParameterError(unknown_name_message("metric", m, METRICS))
        if m not in out:
            out.append(m)
    if not out:
        raise ParameterError(f"No metrics given; choose from {', '.join(METRICS)}.")
    return tuple(out)


def _settings_line(settings: dict[str, Any]) -> dict[str, Any]:
    """The run's evaluation settings without what summary.md's first line already says."""
    shown = {"data", "model_id", "model_sha256", "seed", "methods"}
    return {k: v for k, v in settings.items() if k not in shown}


def _method_params(settings: dict[str, Any]) -> dict[str, Any]:
    return {label: m.get("params", {}) for label, m in (settings.get("methods") or {}).items()}


@dataclass(frozen=True)
class EvalConfig:
    """Settings shared by every record of a run (all recorded, and part of the record key;
    a stored record under another key still serves a run whose differing settings none of
    the asked metrics read: SETTING_READERS, ``_ServingIndex``).

    masker:          the evaluation's masking for the perturbation curves (GiLOT: attention_off)
    n_test, n_calibration: R² test / calibration masks (§5.2)
    n_lds:           held-out ablations of the LDS (keep-probability 1/2, ContextCite)
    target, method_masker: the explained value and the explainers' masking for every method
                     (None = each method's own default; one common game for all methods, as
                     in the SPEX R² protocol, needs both set)
    target_model:    the served model's name when one is given (its answer is explained; the
                     closed-model methods query it; URL not in the key: loopback ports vary)
    r_max:           top-k removal sizes 1..r_max
    max_new_tokens:  length of the explained output when the model generates it
    regen_max_new_tokens: length of each regeneration (regenerate curves)
    auc:             "mean" (GiLOT) or "trapezoid"
    mask_stream:     how the R² test/calibration masks are drawn: "salted" (a stream of the
                     seed apart from the one every method draws its samples from with the
                     same seed; always in the key: records of the earlier unsalted draws,
                     whose first test masks were banzhaf/faith_banzhaf/proxyspex's training
                     masks, are computed again)
    gold_ties:       how the gold metrics rank tied scores: "expected" (the expectation over
                     random tie orders, as AUROC's ties count 1/2; not the feature order).
                     An item whose labels hold one class only (no gold feature, or every
                     feature gold) has NaN gold metrics, left out of the means (the
                     record's ``gold_undefined`` says why)
    """

    metrics: tuple[str, ...]
    granularity: str = "word"
    masker: str = "attention_off"
    n_test: int = 1000
    n_calibration: int = 200
    r_max: int = 10
    max_new_tokens: int = 32
    regen_max_new_tokens: int = 32
    auc: str = "mean"
    chat: bool | None = None
    n_lds: int = 100
    target: str | None = None
    method_masker: str | None = None
    target_model: str | None = None
    mask_stream: str = "salted"
    gold_ties: str = "expected"

    #: settings added after the first stores were written: they enter the record key only
    #: when they differ from their default, so older stores stay valid
    LATER_FIELDS: ClassVar[dict[str, Any]] = {"n_lds": 100, "target": None,
                                              "method_masker": None, "target_model": None}

    def key_fields(self) -> dict[str, Any]:
        """The settings that change a record's numbers (the metric list is not one: a record
        with more metrics than asked serves a later run with fewer)."""
        d = asdict(self)
        d.pop("metrics")
        for k, default in self.LATER_FIELDS.items():
            if d.get(k) == default:
                d.pop(k)
        return d


def model_hash(model: HFModel, threads: int | None = None) -> dict[str, Any]:
    """{"id", "sha256", "dtype"} of a loaded model (sha256 None for in-memory models), with
    its chat template's keyword arguments where it has any (they change the prompts): what
    a record's key holds of the model. The dtype is in it (bfloat16 scores are not float32
    scores); the device is not (the same weights in the same dtype score the same on any
    device, so a run may go on elsewhere), and is written beside it in each record. In a
    reduced dtype, torch's CPU thread count (``threads``) is in it too: the rounding of
    batched sums, and so the scores, depend on it (Ray's actors run RAY_THREADS threads,
    a local run torch's default)."""
    out = {**model.info.provenance(), "dtype": model.info.dtype}
    if threads is not None and model.info.dtype not in ("float32", "float64"):
        out["torch_threads"] = int(threads)
    return out


#: torch threads of each Ray actor (one CPU each)
RAY_THREADS = 1


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _weights_not_name(model: dict[str, Any]) -> dict[str, Any]:
    """What identifies a model in a record's key: its weights hash where it has one, not the
    name it was loaded by (``./m``, ``/home/me/m`` and a moved copy are the same model);
    the id only for a model without a hash (one built in memory)."""
    return {k: v for k, v in model.items() if not (k == "id" and model.get("sha256"))}


def _earlier_template_date(store: Any, model: HFModel) -> str | None:
    """The template date of this model's first record in ``store`` (same weights and chat
    template arguments), for a template that reads the date; None otherwise."""
    if not model.template_reads_date:
        return None
    mine = {k: v for k, v in _weights_not_name(model_hash(model)).items()
            if k != "template_date"}
    for rec in store.records():
        theirs = _weights_not_name(dict(rec.get("model") or {}))
        theirs.pop("device", None)
        theirs.pop("torch_threads", None)
        date = theirs.pop("template_date", None)
        if date and theirs == mine:
            return str(date)
    return None


def _json_clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


#: evaluation settings only some metrics read: a stored record computed under another value
#: of a setting that none of the asked metrics read answers the run as well (n_test changes
#: r2 only, r_max topk only); the explanation itself reads none of them
SETTING_READERS: dict[str, tuple[str, ...]] = {
    "masker": CURVE_METRICS + REGEN_METRICS,
    "auc": CURVE_METRICS + REGEN_METRICS,
    "regen_max_new_tokens": REGEN_METRICS,
    "n_test": ("r2",),
    "n_calibration": ("r2",),
    "mask_stream": ("r2", "lds"),
    "r_max": ("topk",),
    "n_lds": ("lds",),
    "gold_ties": GOLD_METRICS,
}


def _unread_settings(item: EvalItem, spec: MethodSpec, metrics: Sequence[str]) -> set[str]:
    """The settings neither ``metrics`` nor the explanation of ``item`` by ``spec`` read:
    those of SETTING_READERS no asked metric reads, and max_new_tokens when the item's
    output is given and the method regenerates nothing."""
    from ..registry import get_explainer

    out = {k for k, readers in SETTING_READERS.items() if not set(readers) & set(metrics)}
    if item.output is not None and not get_explainer(spec.name).regenerates:
        out.add("max_new_tokens")
    return out


class _ServingIndex:
    """Finds a stored record that answers an (item, method) of this run although its key
    differs: same item content, method, parameters, model weights and seed, equal values of
    every setting the asked metrics or the explanation read, and every asked metric. A
    change of a setting nothing asked reads then costs no recomputation."""

    def __init__(self, store: ResultsStore):
        self._by: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for rec in store.records():
            if rec.get("error") or not isinstance(rec.get("eval"), dict):
                continue
            k = (str(rec.get("item_sha256")), str(rec.get("method")), rec.get("seed"))
            self._by.setdefault(k, []).append(rec)

    def find(self, item: EvalItem, spec: MethodSpec, model: dict[str, Any], seed: int,
             config: EvalConfig, metrics: Sequence[str]) -> dict[str, Any] | None:
        cands = self._by.get((item.sha256, spec.name, seed))
        if not cands:
            return None
        unread = _unread_settings(item, spec, metrics)
        mine = {k: v for k, v in asdict(config).items() if k != "metrics" and k not in unread}
        # (a record holds the granularity its item was explained at: a data set's own)
        mine["granularity"] = item.granularity or config.granularity
        params = _json_clean(spec.param_dict)
        weights = _weights_not_name(model)
        for rec in reversed(cands):  # the latest first
            theirs = dict(rec.get("model") or {})
            theirs.pop("device", None)  # (written beside the key's model, not in it)
            ev = rec["eval"]
            if (rec.get("params") == params and _weights_not_name(theirs) == weights
                    and set(metrics) <= set(rec.get("metrics") or {})
                    and all(ev.get(k, EvalConfig.LATER_FIELDS.get(k)) == v
                            for k, v in _json_clean(mine).items())):
                return rec
        return None


def make_key(item: EvalItem, spec: MethodSpec, model: dict[str, Any], seed: int,
             config: EvalConfig) -> str:
    """The content key of a record."""
    return record_key({
        "item_id": item.id,
        "item_sha256": item.sha256,
        "method": spec.name,
        "params": _json_clean(spec.param_dict),
        "model": _weights_not_name(model),
        "seed": seed,
        # every evaluation setting, also those the method itself does not read: the
        # metrics do (the curves mask with ``masker``; R², top-k and LDS score the game of
        # ``target`` and ``method_masker``), so ig's record under --target kl is not its
        # record under nll
        "eval": config.key_fields(),
    })


class ItemRunner:
    """Computes records for one model (one per process or Ray actor; loads the model once).

    model: a loaded HFModel, a model path, or None (the embedded default model)
    trust_remote_code: run the modeling code a model path ships (see ``load_model``)
    threads:     torch's CPU thread count for this process (a Ray actor: RAY_THREADS)
    loading:     load_model's device and dtype for a model path
    share_cache: share the evaluation's model calls between the methods of an item
    target_url:  the served model's API root (with ``config.target_model``): the explained
                 output is its greedy answer, and closed-model methods (gsmile) query it
    """

    def __init__(self, model: Any, config: EvalConfig, seed: int, *,
                 share_cache: bool = True, target_url: str | None = None,
                 trust_remote_code: bool = False, threads: int | None = None,
                 loading: dict[str, Any] | None = None):
        from ..api import load_model
        from ..models.hf import HFModel

        if model is None or isinstance(model, (str, Path)):
            model = load_model(None if model is None else str(model),
                               trust_remote_code=trust_remote_code, **(loading or {}))
        elif isinstance(model, dict):  # how to load it (a Ray actor: :func:`_model_for_ray`)
            spec = dict(model)
            kwargs = spec.pop("chat_template_kwargs", None)
            date = spec.pop("template_date", None)
            model = load_model(**spec)
            if kwargs:
                model = model.with_chat_template(**kwargs)
            if date:  # the driver's date, whatever day the worker starts on
                model = model.with_template_date(date)
        if not isinstance(model, HFModel):
            raise ParameterError(
                "evaluate needs a local model: a path, None (the embedded model) or "
                "attrlens.load_model(...)."
            )
        if threads is not None:  # a Ray actor: the thread count its records are keyed by
            import torch

            torch.set_num_threads(threads)
        self.model = model
        self.config = config
        self.seed = seed
        self.share_cache = share_cache
        self.target_url = target_url
        self._backend_obj: Any = None
        self._outputs: dict[str, str] = {}
        self._encoder: Any = None
        self._cache_item: str | None = None  # the item (sha256) the caches below belong to
        self._values: dict[tuple[str, str, str], np.ndarray] = {}
        self._texts: dict[bytes, str] = {}

    def _item_cache(self, item: EvalItem) -> None:
        """Start the per-item caches afresh when the item changes (bounded memory)."""
        if self._cache_item != item.sha256:
            self._cache_item = item.sha256
            self._values = {}
            self._texts = {}

    # ---- preparation -------------------------------------------------------------------
    def _spans(self, item: EvalItem) -> list[tuple[int, int]] | None:
        """The item's spans: char offsets into the user's text, which is what ``prepare``
        takes (it maps them into a chat rendering itself)."""
        if item.spans is None:
            return None
        return [(int(s[0]), int(s[1])) for s in item.spans]

    def backend(self) -> Any:
        """The served model's OpenAIBackend (None without ``target_url``)."""
        if self.target_url is None or self.config.target_model is None:
            return None
        if self._backend_obj is None:
            from ..models.openai import OpenAIBackend

            self._backend_obj = OpenAIBackend(self.target_url, self.config.target_model)
        return self._backend_obj

    def _prepare(self, item: EvalItem, *, target: str, masker: str, output: str | None,
                 backend: Any = None) -> tuple[Any, Any]:
        from ..api import prepare

        prompt = item.prompt if isinstance(item.prompt, str) else [dict(m) for m in item.prompt]
        return prepare(
            prompt, model=self.model,
            granularity=item.granularity or self.config.granularity,
            output=output, target=target, masker=masker, spans=self._spans(item),
            chat=self.config.chat, max_new_tokens=self.config.max_new_tokens,
            target_backend=backend, snap_spans=snaps_spans(item),
        )

    def output_text(self, item: EvalItem) -> str:
        """The explained output: the item's, or the greedy answer (cached) of the served model
        when there is one, else of the local model."""
        if item.output is not None:
            return item.output
        key = item.sha256
        if key not in self._outputs or not self.share_cache:
            inputs, _ = self._prepare(item, target="nll", masker="delete", output=None,
                                      backend=self.backend())
            self._outputs = {key: inputs.output_text}  # one item at a time
        return self._outputs[key]

    def _fresh_game(self, item: EvalItem, output: str, target: str, masker: str) -> Game:
        """A new scoring game (empty memo) of the item's explained output."""
        return self._prepare(item, target=target, masker=masker, output=output)[1]

    def _set_values(self, item: EvalItem, output: str, target: str, masker: str, name: str,
                    masks: np.ndarray) -> np.ndarray:
        """(m,) values of a method-independent mask set, scored in one call on a fresh game
        (shared by the item's methods when ``share_cache``)."""
        key = (target, masker, name)
        if self.share_cache and key in self._values:
            return self._values[key]
        vals = np.asarray(self._fresh_game(item, output, target, masker)(masks), dtype=float)
        if self.share_cache:
            self._values[key] = vals
        return vals

    def _fixed_game(self, item: EvalItem, output: str, target: str, masker: str,
                    sets: dict[str, np.ndarray]) -> Game:
        """A game answering the masks of ``sets`` (name -> (m, n) masks) from their values."""
        table: dict[bytes, float] = {}
        n = 0
        for name, masks in sets.items():
            n = masks.shape[1]
            vals = self._set_values(item, output, target, masker, name, masks)
            for row, v in zip(masks, vals):
                table.setdefault(Game.key(row), float(v))
        return _LookupGame(table, n)

    # ---- one record --------------------------------------------------------------------
    def run(self, item: EvalItem, spec: MethodSpec, key: str) -> dict[str, Any]:
        """Explain ``item`` with ``spec`` and compute the configured metrics (a record).

        An item this method cannot explain (its prompt does not fit the device's memory or
        the model's context, a capability the model lacks) gives a *failed* record, with
        the one-line reason under ``error`` and no metrics, and the run goes on; a rerun
        of the same store tries it again (e.g. on a larger device). A failing backend or
        bad parameters still stop the run."""
        from ..report.terminal import one_line

        t0 = time.perf_counter()
        try:
            with self.model.evaluating():
                return self._run(item, spec, key)
        except (InputError, CapabilityError) as exc:
            return {**self._record_head(item, spec, key), "metrics": {},
                    "error": f"{type(exc).__name__}: {one_line(str(exc))}",
                    "wall_s": time.perf_counter() - t0, "finished_at": time.time()}

    def _record_head(self, item: EvalItem, spec: MethodSpec, key: str) -> dict[str, Any]:
        """What every record of (item, method) starts with, failed or not."""
        return {"key": key, "item_id": item.id, "item_sha256": item.sha256,
                "method": spec.name, "label": spec.label,
                "params": _json_clean(spec.param_dict),
                "model": {**model_hash(self.model, _threads()),
                          "device": self.model.info.device},
                "seed": self.seed,
                # the granularity the item was explained at (a data set's own spans, not
                # the run's default "word", which it does not apply)
                "eval": _json_clean({**asdict(self.config),
                                     "granularity": item.granularity
                                     or self.config.granularity}),
                # the library versions and torch threads the record was computed with (not in
                # its key: a rerun on newer versions finds the record; read them to compare)
                "environment": {"attrlens": _version(), **runtime_environment()}}

    def _run(self, item: EvalItem, spec: MethodSpec, key: str) -> dict[str, Any]:
        from ..api import finish, make_explainer

        cfg = self.config
        t0 = time.perf_counter()
        self._item_cache(item)
        output = self.output_text(item)
        explainer = make_explainer(spec.name, dict(spec.param_dict))
        backend = self.backend() if explainer.needs == "closed_model" else None
        if explainer.needs == "closed_model" and backend is None:
            raise ParameterError(
                f"The method '{spec.name}' explains a closed model: give target_url and "
                f"target_model (a served model, e.g. `attrlens serve`)."
            )
        api_before = dict(getattr(backend, "counters", {}) or {})
        game_of = method_game(explainer, cfg.target, cfg.method_masker)
        target, method_masker = game_of["target"], game_of["masker"]
        inputs, scoring = self._prepare(item, target=target, masker=method_masker,
                                        output=output, backend=backend)
        # an item without an output explains the answer output_text generated
        inputs = replace(inputs, generated=item.output is None)
        n = inputs.n_features
        explainer.validate(n)
        # gold features checked before the explanation is paid for (it failed after it)
        snapped = inputs.features.snapped
        gold = None if item.gold is None else feature_gold(item.gold, snapped)
        bad = [g for g in gold or () if not 0 <= g < n]
        if bad:
            raise InputError(f"The item's gold labels {bad} are outside its {n} features "
                             f"(indices 0..{n - 1} at granularity {inputs.features.granularity}"
                             f"); fix its 'labels'.")
        game = explainer.make_game(inputs, scoring, closed=backend)
        exp = explainer.explain(game, seed=self.seed)
        attr = finish(explainer, inputs, scoring, exp, t_start=t0, seed=self.seed,
                      target_backend=backend, api_before=api_before)
        t_explain = time.perf_counter() - t0

        metrics: dict[str, float] = {}
        extra: dict[str, Any] = {}
        want = set(cfg.metrics)
        scores = np.asarray(attr.scores, dtype=np.float64)
        if want & set(CURVE_METRICS):
            from .curves import fixed_output_curves

            cur = fixed_output_curves(scores, self._fresh_game(item, output, "nll", cfg.masker),
                                      auc_kind=cfg.auc)
            metrics.update(morf=cur.morf, lerf=cur.lerf, abpc=cur.abpc)
            extra["curves"] = cur.as_dict()
        if want & set(REGEN_METRICS):
            cur = self._regen_curves(item, scores, output)
            metrics.update(morf_regen=cur.morf, lerf_regen=cur.lerf, abpc_regen=cur.abpc)
            extra["regen_curves"] = cur.as_dict()
        if "r2" in want:
            from .faithfulness import (
                calibration_masks,
                faithfulness_r2,
                predict_surrogate,
                uniform_test_masks,
            )

            sets = {"test": uniform_test_masks(n, cfg.n_test, seed=self.seed)}
            if predict_surrogate(attr, sets["test"][:1]) is None:
                # only an attribution without a surrogate is calibrated (R² "calibrated");
                # a surrogate's own prediction needs no calibration masks scored
                sets["calibration"] = calibration_masks(n, cfg.n_calibration, seed=self.seed)
            fgame = self._fixed_game(item, output, target, method_masker, sets)
            f = faithfulness_r2(attr, fgame, test_masks=sets["test"], seed=self.seed,
                                n_calibration=cfg.n_calibration)
            metrics["r2"] = f.r2
            extra["r2_kind"] = f.kind
        if "topk" in want:
            from .faithfulness import topk_removal

            deltas = topk_removal(attr, self._fresh_game(item, output, target, method_masker),
                                  r_max=cfg.r_max)
            metrics["topk"] = float(np.mean(deltas))
            extra["topk_curve"] = [float(x) for x in deltas]
        if "lds" in want:
            from .lds import lds_masks, linear_datamodeling_score

            zs = lds_masks(n, cfg.n_lds, seed=self.seed)
            vals = self._set_values(item, output, target, method_masker, "lds", zs)
            metrics["lds"] = linear_datamodeling_score(
                scores, _LookupGame({Game.key(r): float(v) for r, v in zip(zs, vals)}, n),
                test_masks=zs).value
        if snapped and (snapped["moved"] or snapped["merged"]):
            extra["spans_snapped"] = {k: snapped[k] for k in ("moved", "merged")}
        if want & set(GOLD_METRICS):
            metrics.update(self._gold_metrics(gold, scores))
            if gold is not None:
                from .metrics import one_class

                labels = np.zeros(n, dtype=bool)
                labels[list(gold)] = True
                why = one_class(labels)
                if why:
                    extra["gold_undefined"] = why

        return {
            **self._record_head(item, spec, key),
            "resolved_params": _json_clean(attr.params),
            "n_features": n,
            "bin": bin_label(n),
            "metrics": {k: float(v) for k, v in metrics.items()},
            **_json_clean(extra),
            "output_text": output,
            "cost": _json_clean(attr.cost),
            "explain_s": t_explain,
            "wall_s": time.perf_counter() - t0,
            "finished_at": time.time(),
            "attribution_data": attr.to_dict(),
        }

    def run_group(self, item: EvalItem, todo: list[tuple[MethodSpec, str]]
                  ) -> list[dict[str, Any]]:
        """Records of several methods on one item (the Ray actors' unit of work)."""
        return [self.run(item, spec, key) for spec, key in todo]

    def _gold_metrics(self, gold: tuple[int, ...] | None, scores: np.ndarray
                      ) -> dict[str, float]:
        nan = float("nan")
        if gold is None:
            return {m: nan for m in self.config.metrics if m in GOLD_METRICS}
        from .metrics import supporting_fact_metrics

        sf = supporting_fact_metrics(scores, list(gold))
        names = {"auroc": "auroc", "r_precision": "precision_at_g",
                 "recall_at_2": "recall_at_2", "recall_at_5": "recall_at_5", "mrr": "mrr"}
        return {m: float(sf[names[m]]) for m in self.config.metrics if m in GOLD_METRICS}

    def _regen_curves(self, item: EvalItem, scores: np.ndarray, output: str) -> Any:
        """Regenerate curves: greedy regeneration from the masked prompt. With the
        attention_off or delete masker the masked tokens are left out of the generation
        input (teacher-forced, attention_off equals deletion; in generation positions of the
        kept tokens are renumbered); replace generates from the prompt with mask tokens."""
        from ..models.embeddings import MiniLMWordEmbeddings
        from .curves import regenerate_curves

        inputs, _ = self._prepare(item, target="nll", masker=self.config.masker, output=output)
        model, masker = self.model, inputs.masker
        memo = self._texts if self.share_cache else {}

        def generate(masks: np.ndarray) -> list[str]:
            out = []
            for row, pert in zip(masks, masker.apply(masks)):
                k = np.packbits(row).tobytes()
                if k not in memo:
                    ids = model.generate([int(t) for t in masker.generation_ids(pert)],
                                         max_new_tokens=self.config.regen_max_new_tokens)
                    memo[k] = model.decode(ids)
                out.append(memo[k])
            return out

        if self._encoder is None:
            self._encoder = MiniLMWordEmbeddings()
        return regenerate_curves(scores, generate, self._encoder.vectors, auc_kind=self.config.auc)


#: the data sets whose spans the adapter derives (sentences, words): snapped to token
#: boundaries; a generic record's spans are the user's own and are refused as given
SNAPPED_KINDS = ("hotpotqa", "sst2", "drop", "mmlu")


def snaps_spans(item: EvalItem) -> bool:
    """Whether ``item``'s spans are moved to token boundaries (a data set's derived spans)."""
    return item.spans is not None and item.meta.get("kind") in SNAPPED_KINDS


def feature_gold(gold: Sequence[int], snapped: dict[str, Any] | None) -> tuple[int, ...]:
    """The gold feature indices of gold span indices: a span merged into a neighbour makes
    that feature gold."""
    if not snapped:
        return tuple(gold)
    fos = snapped["feature_of_span"]
    bad = [int(g) for g in gold if not 0 <= int(g) < len(fos)]
    if bad:
        raise InputError(f"Gold indices {bad} are outside [0, {len(fos)}).")
    return tuple(sorted({fos[int(g)] for g in gold}))


class _LookupGame(Game):
    """A game answering from a table of precomputed values (mask key -> value)."""

    def __init__(self, table: dict[bytes, float], n_features: int):
        super().__init__(None, n_features)
        self.table = table

    def compute(self, masks: np.ndarray) -> list[Any]:
        keys = [self.key(r) for r in masks]
        missing = sum(k not in self.table for k in keys)
        if missing:
            raise ParameterError(
                f"internal error: {missing} masks outside the precomputed evaluation sets. "
                f"Please report it."
            )
        return [self.table[k] for k in keys]


# ---- progress ------------------------------------------------------------------------------
#: seconds between the lines that say a record is still running
HEARTBEAT_S = 30.0


class ProgressPrinter:
    """``[evaluate] done/total records · elapsed · ETA`` lines on stderr, and, while one
    record runs longer than ``heartbeat_s`` (in-process runs), a line every ``heartbeat_s``
    saying which record it is and for how long (a first record of 70 s printed nothing)."""

    def __init__(self, total: int, skipped: int, *, enabled: bool = True,
                 heartbeat_s: float = 30.0, more_metrics: int = 0):
        self.total, self.skipped, self.enabled = total, skipped, enabled
        self.done = 0
        self.t0 = time.perf_counter()
        self.heartbeat_s = heartbeat_s
        self._running: tuple[str, str, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if enabled:
            # (a stored record that lacks a metric asked for now is computed again)
            more = (f"; {more_metrics} stored without a metric asked for now"
                    if more_metrics else "")
            print(f"[evaluate] {total} records to compute ({skipped} already in the store"
                  f"{more})", file=sys.stderr, flush=True)

    def started(self, item_id: str, label: str) -> None:
        """A record begins (its heartbeat lines start after ``heartbeat_s``)."""
        self._running = (item_id, label, time.perf_counter())
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._beats, daemon=True,
                                            name="attrlens-evaluate-heartbeat")
            self._thread.start()

    def beat(self) -> None:
        """One heartbeat line for the running record (none when no record runs)."""
        run = self._running
        if not self.enabled or run is None:
            return
        item_id, label, t = run
        print(f"[evaluate] {self.done + 1}/{self.total} records · {_shown(item_id)} {label} running "
              f"for {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)

    def _beats(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.beat()

    def close(self) -> None:
        """Stop the heartbeat."""
        self._running = None
        self._stop.set()

    def step(self, rec: dict[str, Any]) -> None:
        self.done += 1
        self._running = None
        if not self.enabled:
            return
        el = time.perf_counter() - self.t0
        eta = el / self.done * (self.total - self.done)
        failed = f" · failed: {rec['error']}" if rec.get("error") else ""
        print(f"[evaluate] {self.done}/{self.total} records · {_shown(rec['item_id'])} {rec['label']} "
              f"· {el:.1f} s elapsed · ETA {eta:.0f} s{failed}", file=sys.stderr, flush=True)


def _shown(item_id: Any) -> str:
    """An item id on one terminal line: control characters (a newline, an ANSI escape) as
    escapes (an id of the user's data printed them raw)."""
    from ..report.terminal import literal

    return literal(item_id, keep_newlines=False)


def _md_cell(text: Any) -> str:
    """Text for one cell of a markdown table: its pipes escaped and its control characters
    (a newline split the row) shown as escapes."""
    return _shown(text).replace("|", "\\|")


# ---- summary -------------------------------------------------------------------------------
#: the ``schema`` of summary.json
SUMMARY_SCHEMA = "attrlens.evaluation/1"


@dataclass
class Summary:
    """Aggregates of one evaluation (what summary.json holds).

    table:  {method label: {metric: {"mean", "ci_low", "ci_high", "n"}}}
    bins:   {method label: {metric: {bin: {...}}}}
    paired: {metric: [{"a", "b", "n", "mean_diff", "p"}]}
    failed: {method label: {item id: the one-line reason}} (items it could not explain;
            left out of the aggregates, tried again by a rerun)
    """

    out: Path
    methods: list[str]
    metrics: list[str]
    n_items: int
    table: dict[str, dict[str, dict[str, float]]]
    bins: dict[str, dict[str, dict[str, dict[str, float]]]]
    paired: dict[str, list[dict[str, Any]]]
    settings: dict[str, Any] = field(default_factory=dict)
    computed: int = 0
    skipped: int = 0
    failed: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (no timings: equal runs give equal summaries)."""
        return _json_clean({
            "schema": SUMMARY_SCHEMA,
            "methods": self.methods, "metrics": self.metrics, "n_items": self.n_items,
            "settings": self.settings, "table": self.table, "bins": self.bins,
            "paired": self.paired, "failed": self.failed, "records": "records.jsonl",
        })

    def markdown(self) -> str:
        """A paper-style table: mean [95% CI] per method and metric, bins, paired tests."""
        def cell(s: dict[str, float]) -> str:
            if not s or s.get("n", 0) == 0 or not math.isfinite(s["mean"]):
                return "–"
            return f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"

        st = self.settings
        lines = [
            "# attrlens evaluate",
            "",
            (f"data `{st.get('data')}`, {self.n_items} items, model `{st.get('model_id')}`, "
            f"seed {st.get('seed')}, granularity {st.get('granularity')}, evaluation masker "
            f"{st.get('masker')}, AUC {st.get('auc')}. Cells: mean [95% bootstrap CI] over "
            f"items (n = items)."),
            "",
            (f"model sha256 `{st.get('model_sha256') or 'none (an in-memory model)'}`; "
             f"evaluation settings `{json.dumps(_settings_line(st), sort_keys=True)}`; "
             f"method parameters `{json.dumps(_method_params(st), sort_keys=True)}`."),
            "",
            "| method | " + " | ".join(self.metrics) + " | n |",
            "|---|" + "---|" * (len(self.metrics) + 1),
        ]
        for m in self.methods:
            row = self.table.get(m, {})
            ns = {k: row[k]["n"] for k in self.metrics if k in row}
            n = min(ns.values(), default=0)  # a metric with more items says its own n
            lines.append(f"| {m} | " + " | ".join(
                cell(row.get(k, {})) + (f" (n={ns[k]})" if ns.get(k, n) != n else "")
                for k in self.metrics) + f" | {n} |")
        bins_used = sorted({b for m in self.bins.values() for k in m.values() for b in k},
                           key=_bin_order)
        if bins_used:
            lines += ["", "## By number of features", ""]
            lines.append("| method | metric | " + " | ".join(bins_used) + " |")
            lines.append("|---|---|" + "---|" * len(bins_used))
            for m in self.methods:
                for k in self.metrics:
                    b = self.bins.get(m, {}).get(k, {})
                    lines.append(f"| {m} | {k} | " + " | ".join(
                        f"{cell(b[x])} (n={b[x]['n']})" if x in b else "–" for x in bins_used
                    ) + " |")
        own = [k for k in self.metrics if k in OWN_GAME_METRICS]
        games = _games(st, self.methods)
        if own and any(games.values()):
            why = (f"{', '.join(own)} score each method on its own game (target and "
                   f"masker): methods with different games are not compared by them (no "
                   f"paired test).")
            lines += ["", "## Games", "", why, "", "| method | target | masker |",
                      "|---|---|---|"]
            lines += [f"| {m} | {(g or {}).get('target', '?')} | "
                      f"{(g or {}).get('masker', '?')} |" for m, g in games.items()]
        if any(self.paired.values()):
            lines += ["", "## Paired tests (Wilcoxon signed-rank, two-sided)", "",
                      "| metric | a | b | n | mean(a - b) | p |", "|---|---|---|---|---|---|"]
            for k, tests in self.paired.items():
                for t in tests:
                    lines.append(f"| {k} | {t['a']} | {t['b']} | {t['n']} | "
                                 f"{t['mean_diff']:.4f} | {t['p']:.3g} |")
        if any(self.failed.values()):
            lines += ["", ("## Items a method could not explain (left out above; a rerun "
                      "tries them again)"), "", "| method | item | reason |", "|---|---|---|"]
            for m, items in self.failed.items():
                for i, why in sorted(items.items()):
                    lines.append(f"| {m} | {_md_cell(i)} | {_md_cell(why)} |")
        return "\n".join(lines) + "\n"


def method_game(explainer: Any, target: str | None, masker: str | None) -> dict[str, str]:
    """{target, masker} a method is scored on: evaluate's target= and method_masker= where
    given, else the method's own (what r2, topk and lds read: OWN_GAME_METRICS)."""
    return {"target": target or explainer.default_target,
            "masker": masker or explainer.default_masker}


def _games(settings: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Each method's game ({target, masker}) from the summary's settings; None where the
    settings do not say (then all are taken as one)."""
    info = settings.get("methods") or {}
    return {m: (info.get(m) or {}).get("game") for m in methods}


def _bin_order(b: str) -> int:
    if b.startswith("<"):
        return -1
    if b.startswith(">="):
        return 10**6
    return int(b.split("-")[0])


def summarize_records(records: list[dict[str, Any]], methods: list[str], metrics: list[str],
                      *, out: Path, settings: dict[str, Any], n_items: int) -> Summary:
    """Aggregate records (one per item and method) into a :class:`Summary`."""
    from .stats import paired_test, summarize

    by: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    bins_of: dict[str, str] = {}
    failed: dict[str, dict[str, str]] = {}
    for r in records:
        if r["label"] not in by:
            continue
        if r.get("error"):
            failed.setdefault(r["label"], {})[r["item_id"]] = r["error"]
            continue
        by[r["label"]][r["item_id"]] = {  # (a value not computed is null on disk)
            k: float("nan") if v is None else v for k, v in r["metrics"].items()}
        bins_of[r["item_id"]] = r["bin"]
    nan = float("nan")
    table: dict[str, dict[str, dict[str, float]]] = {}
    bins: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for m in methods:
        ids = sorted(by[m])
        table[m], bins[m] = {}, {}
        for k in metrics:
            vals = [by[m][i].get(k, nan) for i in ids]
            table[m][k] = summarize(vals)
            per_bin: dict[str, list[float]] = {}
            for i, v in zip(ids, vals):
                per_bin.setdefault(bins_of[i], []).append(v)
            bins[m][k] = {b: summarize(v) for b, v in sorted(per_bin.items(),
                                                              key=lambda kv: _bin_order(kv[0]))}
    paired: dict[str, list[dict[str, Any]]] = {}
    game = _games(settings, methods)
    for k in metrics:
        paired[k] = []
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                if k in OWN_GAME_METRICS and game[a] != game[b]:
                    continue  # (each on a game of its own: not the same quantity)
                common = sorted(set(by[a]) & set(by[b]))
                t = paired_test([by[a][j].get(k, nan) for j in common],
                                [by[b][j].get(k, nan) for j in common])
                paired[k].append({"a": a, "b": b, **t})
    return Summary(out=out, methods=methods, metrics=metrics, n_items=n_items, table=table,
                   bins=bins, paired=paired, settings=settings, failed=failed)


# ---- backends ------------------------------------------------------------------------------
Group = tuple[EvalItem, list[tuple[MethodSpec, str]]]


def _run_local(runner: ItemRunner, groups: list[Group],
               on_record: Callable[[dict[str, Any]], None],
               on_start: Callable[[str, str], None] | None = None) -> None:
    for item, todo in groups:
        for spec, key in todo:
            if on_start is not None:
                on_start(item.id, spec.label)
            on_record(runner.run(item, spec, key))


def _model_for_ray(model: Any) -> Any:
    """What the actors get: the loaded model (shipped once through the object store), or,
    for a model with modeling code of its own (whose classes Ray's workers cannot unpickle:
    transformers imports them from a module cache of its own), how to load it from its
    directory (the driver has loaded it: its code was allowed)."""
    if not type(model.model).__module__.startswith("transformers_modules"):
        return model
    path = Path(model.info.id)
    if not path.is_dir():
        raise ParameterError(
            f"The model {model.info.id} runs code of its own, which Ray's workers cannot "
            f"receive as an object; give evaluate its directory "
            f"(model='path/to/dir', trust_remote_code=True) or use backend='local'."
        )
    dev = model.device.type if model.device.type == "cpu" else str(model.device)
    return {"path": str(path), "device": dev, "dtype": model.info.dtype,
            "trust_remote_code": True,
            "chat_template_kwargs": model.info.chat_template_kwargs,
            "template_date": model.info.template_date}


def _run_ray(model: Any, config: EvalConfig, seed: int, groups: list[Group], *, workers: int,
             address: str | None, on_record: Callable[[dict[str, Any]], None],
             share_cache: bool = True, target_url: str | None = None,
             quiet: bool = False) -> None:
    """Items spread over an actor pool of ``workers`` Ray actors (each loads the model once).

    A loaded model is shipped once through the object store; a path, None or a dict of
    ``load_model`` arguments (:func:`_model_for_ray`) is loaded by each actor. Records are
    written by this (driver) process as groups finish. ``quiet`` keeps Ray's own start-up
    lines (its INFO and WARNING log) off stderr too; its errors still show.
    """
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as exc:
        raise ParameterError(
            "The ray backend needs Ray: pip install 'ray' (or use backend='local')."
        ) from exc
    started = False
    if not ray.is_initialized():
        level = logging.ERROR if quiet else logging.INFO
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=level)
        else:
            ray.init(num_cpus=max(2, workers), include_dashboard=False, log_to_driver=False,
                     logging_level=level)
        started = True
    try:
        from ..models.hf import HFModel

        model_arg = ray.put(model) if isinstance(model, HFModel) else model
        actor_cls = ray.remote(num_cpus=1)(ItemRunner)
        actors = [actor_cls.remote(model_arg, config, seed, share_cache=share_cache,
                                   target_url=target_url, threads=RAY_THREADS)
                  for _ in range(workers)]
        pool = ActorPool(actors)
        for recs in pool.map_unordered(lambda a, g: a.run_group.remote(g[0], g[1]), groups):
            for r in recs:
                on_record(r)
    finally:
        if started:
            ray.shutdown()


def check_ray_address(address: Any, timeout: float = 5.0) -> None:
    """Refuse a Ray cluster address that nothing answers at, before any model loads (Ray
    itself retried for minutes after the load). ``auto`` (a cluster started on this
    machine) is left to Ray; ``host:port`` and ``ray://host:port`` are tried once."""
    import socket

    if not isinstance(address, str) or not address.strip():
        raise ParameterError(f"The Ray address must be 'host:port', 'ray://host:port' or "
                             f"'auto'; got {address!r}.")
    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ParameterError(f"The Ray address must be 'host:port', 'ray://host:port' or "
                             f"'auto'; got {address!r}.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"Nothing answers at the Ray address {address} "
                         f"({exc.strerror or type(exc).__name__}); start the cluster "
                         f"(ray start --head) or fix --address.") from None


# ---- the entry point -----------------------------------------------------------------------
def evaluate(
    data: str | Path | Sequence[dict[str, Any] | EvalItem],
    *,
    methods: Sequence[str | tuple[str, dict[str, Any]] | MethodSpec] | str,
    metrics: Sequence[str] | str = ("abpc",),
    model: Any = None,
    out: str | Path,
    limit: int | None = None,
    seed: int = 0,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    granularity: str = "word",
    masker: str = "attention_off",
    n_test: int = 1000,
    n_calibration: int = 200,
    r_max: int = 10,
    max_new_tokens: int = 32,
    regen_max_new_tokens: int = 32,
    auc: str = "mean",
    chat: bool | None = None,
    kind: str = "auto",
    n_lds: int = 100,
    target: str | None = None,
    method_masker: str | None = None,
    target_url: str | None = None,
    target_model: str | None = None,
    share_cache: bool = True,
    report: bool = True,
    progress: bool = True,
    trust_remote_code: bool = False,
    chat_template_kwargs: dict[str, Any] | None = None,
    template_date: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Summary:
    """Run ``methods`` over the items of ``data``, score them with ``metrics``, aggregate.

    data:     a JSONL path (repository-relative paths work from anywhere in the checkout) or
              records / :class:`EvalItem` s; ``kind`` forces an adapter (see datasets.KINDS)
    methods:  names, (name, params) pairs, or "loo,lime:num_samples=64"
    metrics:  names from METRICS, or a comma-separated string
    model:    a loaded model, a path, or None (the embedded model); ``trust_remote_code``,
              ``device``, ``dtype``: how a path is loaded (see ``attrlens.load_model``;
              dtype "float32" to compare records across machines and backends: bf16
              scores depend on the thread count)
    out:      output directory (records.jsonl, summary.json, summary.md, attributions/,
              items/ and index.html), new or empty; an existing run's is resumed (a folder
              holding anything else is refused): finished records are not
              recomputed, failed ones (an item a method could not explain: ``error``, listed
              in the summary's ``failed``) are tried again
    backend:  "local" or "ray" (``workers`` actors; ``address`` of a cluster, else local Ray)
    masker:   the evaluation's masking for MoRF/LeRF (attention_off, delete, replace)
    n_lds:    held-out ablations of the ``lds`` metric
    target, method_masker: the value explained and the explainers' masking for all methods
              (None = each method's default; R², LDS and top-k are measured on that game)
    target_url, target_model: a served model (OpenAI-compatible API root and model name):
              its greedy answer is the explained output of every item without one, and the
              closed-model methods (gsmile) query it; local methods explain that answer on the
              local model
    share_cache: share the evaluation's model calls between an item's methods (same numbers)
    report:   write each record's attribution page (items/) and index.html linking them
    chat_template_kwargs: keyword arguments of the model's chat template (e.g.
              ``{"enable_thinking": False}``); part of every record's key
    template_date: the date (``YYYY-MM-DD``) a chat template that reads the date renders
              (Llama 3.2); default: the date of this model's earlier records in ``out``,
              else the day the model was loaded; part of every record's key
    Returns the :class:`Summary` (also written to ``out``).
    """
    from ..scoring.targets import TARGETS
    from ..text.mask import MASKERS
    from ..text.segment import GRANULARITIES

    # the checked values, normalised (numpy ints -> int: they go into JSON record keys)
    seed = check_seed("evaluate", seed)
    check_param("evaluate", "backend", backend, choices=BACKENDS)
    workers = check_param("evaluate", "workers", workers, kind=int, low=1)
    if workers != 1 and backend == "local":
        raise ParameterError(f"workers={workers} are Ray actors: add backend='ray' "
                             f"(--backend ray), or leave workers out (the local backend runs "
                             f"one process).")
    if address is not None and backend != "ray":
        raise ParameterError(f"address={address!r} is a Ray cluster's: add backend='ray' "
                             f"(--backend ray), or leave it out (it was ignored).")
    if address is not None:
        check_ray_address(address)
    if template_date is not None:  # (it was refused after the model's load)
        from ..models.hf import parse_template_date

        parse_template_date(template_date)
    check_param("evaluate", "granularity", granularity, choices=GRANULARITIES)
    check_param("evaluate", "masker", masker, choices=EVAL_MASKERS)
    check_param("evaluate", "auc", auc, choices=("mean", "trapezoid"))
    n_test = check_param("evaluate", "n_test", n_test, kind=int, low=2)
    n_calibration = check_param("evaluate", "n_calibration", n_calibration, kind=int, low=2)
    r_max = check_param("evaluate", "r_max", r_max, kind=int, low=1)
    max_new_tokens = check_param("evaluate", "max_new_tokens", max_new_tokens, kind=int, low=1)
    regen_max_new_tokens = check_param("evaluate", "regen_max_new_tokens",
                                       regen_max_new_tokens, kind=int, low=1)
    n_lds = check_param("evaluate", "n_lds", n_lds, kind=int, low=2)
    limit = check_param("evaluate", "limit", limit, kind=int, low=1, none_ok=True)
    check_param("evaluate", "chat", chat, kind=bool, none_ok=True)
    if target == "contrastive":
        raise ParameterError(
            "evaluate cannot use the 'contrastive' target: it needs a contrast answer per "
            "item, which evaluation items do not carry; use attrlens.explain for it, or "
            "another target (" + ", ".join(t for t in TARGETS if t != "contrastive") + ")."
        )
    check_param("evaluate", "target", target, none_ok=True,
                choices=tuple(t for t in TARGETS if t != "contrastive"))
    check_param("evaluate", "method_masker", method_masker, choices=MASKERS, none_ok=True)
    check_param("evaluate", "target_url", target_url, kind=str, none_ok=True)
    check_param("evaluate", "target_model", target_model, kind=str, none_ok=True)
    if (target_url is None) != (target_model is None):
        raise ParameterError("Give both target_url and target_model (a served model), or "
                             "neither.")
    check_param("evaluate", "share_cache", share_cache, kind=bool)
    check_param("evaluate", "report", report, kind=bool)
    if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, dict):
        raise ParameterError(
            f"chat_template_kwargs must be a dict of the chat template's keyword arguments, "
            f"e.g. {{'enable_thinking': False}}; got {type(chat_template_kwargs).__name__}."
        )
    loading = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    if loading and not (model is None or isinstance(model, (str, Path))):
        from ..api import refuse_loading

        refuse_loading(loading)
    specs = parse_methods(methods)
    metric_names = parse_metrics(metrics)
    from ..scoring.targets import DIVERGENCES

    if "topk" in metric_names and target in DIVERGENCES:
        raise ParameterError(
            f"The topk metric is the change relative to v(all features), which under the "
            f"{target} target is 0 by definition (the unmasked prompt against itself): use "
            f"--target nll or logprob for topk, or other metrics (abpc, r2, lds) with "
            f"{target}.")
    from ..api import make_explainer
    from ..params import validate

    games: dict[str, dict[str, str]] = {}
    for s in specs:
        # unknown names and bad values (types, ranges, choices) fail now, not after the model
        # has loaded; the checks that need an item's feature count run per record
        ex = make_explainer(s.name, dict(s.params))
        validate(ex.owner(), ex.params, ex.all_parameters())
        games[s.label] = method_game(ex, target, method_masker)
        if ex.needs == "closed_model" and target_url is None:
            raise ParameterError(
                f"The method '{s.name}' explains a closed model: give target_url and "
                f"target_model (a served model, e.g. `attrlens serve`)."
            )
    items = load_items(data, kind=kind, limit=limit)
    own = sorted({it.granularity for it in items if it.granularity})
    fixed = all(it.granularity for it in items)
    if fixed and granularity != "word":
        raise ParameterError(
            f"Every item of this data set brings its own features (granularity "
            f"{'/'.join(own)}: e.g. the shared SST-2, DROP, MMLU and HotpotQA files' words or "
            f"sentences); granularity '{granularity}' would not apply: leave it out.")
    asked = [m for m in metric_names if m in GOLD_METRICS]
    if asked and not any(it.gold for it in items):
        raise ParameterError(
            f"{', '.join(asked)} compare with gold features (a record's 'labels', HotpotQA's "
            f"supporting facts), and none of the {len(items)} items has them: drop "
            f"{'them' if len(asked) > 1 else 'it'} or give labels.")
    config = EvalConfig(metrics=metric_names, granularity=granularity, masker=masker,
                        n_test=n_test, n_calibration=n_calibration, r_max=r_max,
                        max_new_tokens=max_new_tokens, regen_max_new_tokens=regen_max_new_tokens,
                        auc=auc, chat=chat, n_lds=n_lds, target=target,
                        method_masker=method_masker, target_model=target_model)
    store = ResultsStore(out)
    out_dir = store.dir

    # the driver loads the model too (for its hash; in-process runs use it)
    runner = ItemRunner(model, config, seed, share_cache=share_cache, target_url=target_url,
                        trust_remote_code=trust_remote_code, loading=loading)
    if chat_template_kwargs is not None:
        runner.model = runner.model.with_chat_template(**chat_template_kwargs)
    if template_date is not None:
        runner.model = runner.model.with_template_date(template_date)
    else:
        earlier = _earlier_template_date(store, runner.model)
        if earlier is not None:  # a rerun on a later day renders the run's prompts again
            runner.model = runner.model.with_template_date(earlier)
    mhash = model_hash(runner.model, RAY_THREADS if backend == "ray" else _threads())
    groups: list[Group] = []
    n_skip = n_more = 0
    keys: list[str] = []
    kept: set[str] = set()  # metrics of records computed again for a metric they lack
    serving = _ServingIndex(store)
    for item in items:
        todo = []
        for spec in specs:
            key = make_key(item, spec, mhash, seed, config)
            keys.append(key)
            old = store.get(key)
            if old is not None and set(metric_names) <= set(old.get("metrics", {})):
                n_skip += 1
                continue
            served = None if old is not None else serving.find(
                item, spec, mhash, seed, config, metric_names)
            if served is not None:  # computed under settings the asked metrics do not read
                keys[-1] = served["key"]
                n_skip += 1
                continue
            if old is not None:
                kept |= set(old.get("metrics", {}))
                n_more += 1
            todo.append((spec, key))
        if todo:
            groups.append((item, todo))
    if kept - set(metric_names):
        # the new record replaces the old one: it keeps the old one's metrics too (same key,
        # same seed: the same explanation), so asking for one more metric loses none
        config = replace(config, metrics=metric_names + tuple(
            m for m in METRICS if m in kept and m not in metric_names))
        runner.config = config
    prog = ProgressPrinter(sum(len(t) for _, t in groups), n_skip, enabled=progress,
                           heartbeat_s=HEARTBEAT_S, more_metrics=n_more)
    att_dir = out_dir / "attributions"

    def on_record(rec: dict[str, Any]) -> None:
        data_ = rec.pop("attribution_data", None)
        if data_ is not None:
            att_dir.mkdir(exist_ok=True)
            name = f"{rec['key'][:16]}.json"
            (att_dir / name).write_text(json.dumps(json_safe(data_), indent=1,
                                                   allow_nan=False), encoding="utf-8")
            rec["attribution"] = f"attributions/{name}"
            if report:
                try:
                    rec["page"] = _write_page(out_dir, rec, data_)
                except Exception as exc:  # noqa: BLE001 - a report must never lose a record
                    print(f"[evaluate] no page for {rec['item_id']} {rec['label']}: "
                          f"{type(exc).__name__}: {exc} (index.html retries it)",
                          file=sys.stderr, flush=True)
        store.append(rec)
        prog.step(rec)

    if backend == "local" or not groups:
        try:
            _run_local(runner, groups, on_record, prog.started)
        finally:
            prog.close()
    else:
        _run_ray(_model_for_ray(runner.model), config, seed, groups, workers=workers,
                 address=address, on_record=on_record, share_cache=share_cache,
                 target_url=target_url, quiet=not progress)

    wanted = set(keys)
    records = [r for r in store.records() if r["key"] in wanted]
    settings = {
        "data": data if isinstance(data, str) else (str(data) if isinstance(data, Path)
                                                    else "in-memory"),
        "model_id": mhash["id"], "model_sha256": mhash["sha256"], "seed": seed,
        **{k: mhash[k] for k in ("chat_template_kwargs", "template_date") if k in mhash},
        **config.key_fields(),
        **({"granularity": f"{'/'.join(own)} (the data set's own)"} if fixed else {}),
        # (the game each method is scored on by r2, topk and lds: OWN_GAME_METRICS)
        "methods": {s.label: {"name": s.name, "params": _json_clean(s.param_dict),
                              "game": games[s.label]} for s in specs},
    }
    summary = summarize_records(records, [s.label for s in specs], list(metric_names),
                                out=out_dir, settings=settings, n_items=len(items))
    summary.computed, summary.skipped = prog.done, n_skip
    (out_dir / "summary.json").write_text(
        json.dumps(json_safe(summary.to_dict()), indent=2, sort_keys=True,
                   allow_nan=False) + "\n",
        encoding="utf-8")
    (out_dir / "summary.md").write_text(summary.markdown(), encoding="utf-8")
    if report:
        write_index(out_dir, records, title=f"attrlens evaluate · {settings['data']}")
    return summary


# ---- per-item reports ----------------------------------------------------------------------
def _write_page(out_dir: Path, rec: dict[str, Any], data: dict[str, Any]) -> str:
    """Write a record's attribution page (``items/<name>.html``); returns its relative path."""
    from ..report.export import attribution_from_record
    from ..report.html import record_page_name, render_html

    rel = f"items/{record_page_name(rec)}"
    (out_dir / "items").mkdir(exist_ok=True)
    page = render_html(attribution_from_record({**rec, "attribution_data": data}))
    (out_dir / rel).write_text(page, encoding="utf-8")
    return rel


def write_index(out_dir: str | Path, records: list[dict[str, Any]], *,
                title: str = "attrlens evaluate") -> Path:
    """``DIR/index.html``: one row per record linking its page; records of older runs without
    a page get one from their saved attribution (``attributions/…json``) first."""
    from ..report.html import index_html

    out_dir = Path(out_dir)
    rows = []
    for r in records:
        if r.get("error"):  # a failed record: a row with its reason, no page
            rows.append(r)
            continue
        page = r.get("page")
        if not page or not (out_dir / page).is_file():
            att = out_dir / str(r.get("attribution", ""))
            if not r.get("attribution") or not att.is_file():
                continue  # nothing to show for this record
            try:
                page = _write_page(out_dir, r, json.loads(att.read_text(encoding="utf-8")))
            except Exception as exc:  # noqa: BLE001 - one bad page must not lose the index
                print(f"[evaluate] no page for {r.get('item_id')} {r.get('label')}: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                continue
        rows.append({**r, "page": page})
    index = out_dir / "index.html"
    index.write_text(index_html(rows, title=title), encoding="utf-8")
    return index


__all__ = [
    "EvalConfig",
    "ItemRunner",
    "MethodSpec",
    "Summary",
    "evaluate",
    "parse_methods",
    "parse_metrics",
    "summarize_records",
    "write_index",
]
