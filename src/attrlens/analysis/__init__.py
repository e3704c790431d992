"""Method-agnostic uses of attributions (they take any method's :class:`Attribution`).

``query_weight``  attribution-guided query weight of an in-context prompt (GiLOT §5.1)
``compare``       two attributions of prompts that differ in a few words, aligned by slot
                  (GiLOT §5.2)

These modules never run a model themselves: the functions that explain prompts take an
``explain`` callable (prompt -> Attribution), e.g. ``functools.partial(attrlens.explain,
model=model, method="gilot")``.
"""

from .compare import Comparison, align_slots, compare_attributions, run_compare
from .query_weight import (
    QueryWeight,
    check_query_has_features,
    features_in_span,
    locate_query,
    marked_spans,
    parse_span,
    query_weight,
    query_weight_of,
    run_query_weight,
)

__all__ = [
    "Comparison",
    "QueryWeight",
    "align_slots",
    "check_query_has_features",
    "compare_attributions",
    "features_in_span",
    "locate_query",
    "marked_spans",
    "parse_span",
    "query_weight",
    "query_weight_of",
    "run_compare",
    "run_query_weight",
]
