"""Backend protocol: what a language model offers to the explainers.

A backend declares its capabilities as a set of names. Explainers ask with
:func:`require`, which raises :class:`CapabilityError` naming the methods that need the
missing capability.

Capabilities:
    tokenize      text -> token ids with char offsets
    render_chat   chat messages -> prompt text with the model's template
    generate      greedy (and beam) generation
    score         teacher-forced log-probs of a fixed continuation for a batch of inputs
    embeddings    input-embedding matrix
    rotary        the model's rotary position module (RoPE models)
    gradients     backward passes (white-box)
    top_logprobs  top-k log-probs of generated tokens (API backends that offer them)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CapabilityError

#: which methods need which capability, for error messages
CAPABILITY_USERS: dict[str, str] = {
    "score": "loo, lime, kernel_shap, banzhaf, spex, proxyspex (on an open model), rope_lime (surrogate)",
    "generate": "every method when the output is not given",
    "embeddings": "gilot (OT cost), rope_lime (RoPE space)",
    "rotary": "rope_lime (space='embed_rope' or 'layer0_keys')",
    "gradients": "integrated_gradients",
    "top_logprobs": "spex/proxyspex on a closed model (log-prob difference value)",
}


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of a model: a readable id and the sha256 of its weights file."""

    id: str
    sha256: str | None


def require(backend: object, capability: str, *, method: str | None = None) -> None:
    """Raise CapabilityError unless ``backend`` declares ``capability``."""
    caps = getattr(backend, "capabilities", set())
    if capability not in caps:
        who = f"The method '{method}'" if method else "This method"
        users = CAPABILITY_USERS.get(capability, "")
        raise CapabilityError(
            f"{who} needs the backend capability '{capability}', which "
            f"{type(backend).__name__} does not offer (it offers: {', '.join(sorted(caps))})."
            + (f" Methods that need '{capability}': {users}." if users else "")
        )
