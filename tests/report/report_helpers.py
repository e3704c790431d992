"""Builders of results for the report tests (no model needed), with hostile text."""

from __future__ import annotations

import numpy as np

from attrlens.result import Attribution

XSS = '<script>alert(1)</script><img src=x onerror="alert(2)">'


def spans_of(text: str, words: list[str]) -> list[list[list[int]]]:
    """Char spans of consecutive words (each word's span includes its leading space)."""
    spans, cursor = [], 0
    for w in words:
        at = text.index(w, cursor)
        spans.append([[cursor, at + len(w)]])
        cursor = at + len(w)
    return spans


def make_attr(*, method: str = "loo", prompt: str | None = None, output: str | None = None,
              matrix: bool = True, seed: int = 0) -> Attribution:
    """A word-level result on a prompt with an XSS payload and two equal labels ("a")."""
    prompt = prompt or f"Is a cat a pet? {XSS} Answer:"
    output = output or f" Yes {XSS} ok"
    words = prompt.split(" ")
    spans = spans_of(prompt, words)
    labels = [prompt[s[0][0]:s[0][1]] for s in spans]
    n = len(labels)
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n)
    out_words = output.split(" ")
    toks, cursor = [], 0
    for w in out_words[1:]:
        at = output.index(w, cursor)
        toks.append({"text": output[cursor:at + len(w)], "start": cursor, "end": at + len(w)})
        cursor = at + len(w)
    pot = rng.normal(size=(n, len(toks))) if matrix else None
    return Attribution(
        method=method, scores=scores, labels=labels, spans=spans, input_text=prompt,
        output_text=output, params={"budget": 64, "target": {"name": "nll"}, "masker": "delete",
                                    "granularity": "word", "note": XSS},
        model={"id": f"model {XSS}", "sha256": "ab" * 32}, per_output_token=pot,
        cost={"model_forwards": 12, "tokens_processed": 340, "api_calls": 0, "wall_s": 0.5},
        seed=seed, output_tokens=toks,
        extra={"metadata": {"full_value": 1.5, "comment": XSS}, "warnings": [f"warn {XSS}"]},
    )


def add_interactions(attr: Attribution) -> Attribution:
    """Pairwise and third-order terms, incl. one between the two "a" features (1 and 3)."""
    attr.interactions = {"index": "fbii", "order": 3, "terms": [
        {"features": [1, 3], "value": 0.9}, {"features": [0, 2], "value": -0.5},
        {"features": [2, 4], "value": 0.3}, {"features": [0, 1, 2], "value": 0.2},
        {"features": [1], "value": 0.4}]}
    attr.extra["faithfulness"] = {
        "r2": {"value": 0.87, "ci": [0.8, 0.92], "kind": "surrogate", "n_test": 1000},
        "abpc": {"value": 0.31, "ci": [0.2, 0.4]},
        "topk": {"r": [1, 2, 3], "delta": [0.1, 0.25, 0.3], "ci_low": [0.05, 0.2, 0.22],
                 "ci_high": [0.15, 0.3, 0.38], "mean": 0.2167}}
    return attr


def make_gilot(seed: int = 1) -> Attribution:
    """A GiLOT-like result: columns are beam positions, with beam mass and beams."""
    attr = make_attr(method="gilot", seed=seed)
    J = 4
    attr.per_output_token = np.abs(np.random.default_rng(seed).normal(size=(attr.n_features, J)))
    attr.scores = attr.per_output_token.mean(1)
    attr.extra["metadata"] = {"beam_mass": [0.9, 0.7, 0.55, 0.4],
                              "beams": [{"text": f" Yes {XSS}", "logprob": -1.2},
                                        {"text": " No", "logprob": -2.5}], "distance": "ot"}
    return attr
