"""Backend capabilities: what a language model offers, and what a method needs of it.

A backend declares its capabilities as a set of names (``capabilities``). A method declares
what it needs (``Explainer.needs``: a game, a local model, a closed model);
:func:`require_needs` checks a model (and a closed backend) against that before any work,
and :func:`require` raises :class:`CapabilityError` naming what is missing.

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import CapabilityError

T = TypeVar("T")

#: the capabilities each kind of need asks of the local model and of the closed backend
#: (a game on a prompt is the local model's teacher-forced scores)
NEEDS_CAPABILITIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "game": (("tokenize", "generate", "score"), ()),
    "local_model": (("tokenize", "generate", "score"), ()),
    "closed_model": (("tokenize", "score"), ("generate",)),
}


#: keyword arguments of every ``from_pretrained`` call of attrlens': no kernels from the Hub
#: (transformers 5.25 turns them on by default and downloads them at load time; attrlens
#: never downloads at run time, and its scores are those of the model's own layers)
LOAD_KWARGS: dict[str, Any] = {"use_kernels": False}


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of a model: a readable id, the sha256 of its weights file, and where it
    runs (device, e.g. ``cpu`` / ``cuda:0`` / ``cuda:0,cuda:1``, and dtype, e.g. ``float32``);
    the keyword arguments its chat template is rendered with, if any (e.g. Qwen3's
    ``{"enable_thinking": False}``: they change every chat prompt); and, for a template that
    writes the date into the prompt (Llama 3.2, Granite), the date it is rendered with
    (``YYYY-MM-DD``; fixed when the model is loaded, so that a run's prompts, and a rerun's,
    do not change at midnight)."""

    id: str
    sha256: str | None
    device: str | None = None
    dtype: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    template_date: str | None = None

    def provenance(self) -> dict[str, Any]:
        """What a result or an evaluation record says about the model: id, sha256, and the
        chat template's keyword arguments and date where there are any."""
        out: dict[str, Any] = {"id": self.id, "sha256": self.sha256}
        if self.chat_template_kwargs:
            out["chat_template_kwargs"] = dict(self.chat_template_kwargs)
        if self.template_date:
            out["template_date"] = self.template_date
        return out


def require(backend: object, capability: str, *, method: str | None = None) -> None:
    """Raise CapabilityError unless ``backend`` declares ``capability``."""
    caps = set(getattr(backend, "capabilities", set()))
    if capability not in caps:
        who = f"The method '{method}'" if method else "This method"
        offers = ", ".join(sorted(caps)) or "nothing"
        raise CapabilityError(
            f"{who} needs the backend capability '{capability}', which "
            f"{type(backend).__name__} does not offer (it offers: {offers})."
        )


def require_needs(
    needs: str, model: object, closed: object | None = None, *, method: str | None = None
) -> None:
    """Check ``model`` (the local model) and ``closed`` (the served model whose output is
    explained, if any) against what a method with ``needs`` uses; CapabilityError otherwise."""
    if needs not in NEEDS_CAPABILITIES:
        raise ValueError(f"Unknown need {needs!r}; expected one of {tuple(NEEDS_CAPABILITIES)}.")
    local, served = NEEDS_CAPABILITIES[needs]
    for cap in local:
        require(model, cap, method=method)
    if served:
        if closed is None:
            who = f"The method '{method}'" if method else "This method"
            raise CapabilityError(
                f"{who} explains a closed model: give --target-url and --target-model "
                f"(target_backend=OpenAIBackend(...))."
            )
        for cap in served:
            require(closed, cap, method=method)


def runtime_environment() -> dict[str, Any]:
    """What a local-model result depends on beyond the model and its parameters: the torch
    and transformers versions and torch's intra-op thread count (the CPU's speed, and with
    bf16 the rounding of batched sums, depend on it; attrlens keeps torch's default, chosen
    by measurement, see benchmarks/RESULTS.md)."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": int(torch.get_num_threads())}


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The out-of-memory exception classes of the installed torch (CUDA's, the generic one
    that MPS and XPU raise)."""
    import torch

    errs = {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)}
    return tuple(e for e in errs if e is not None)


def release_cached_memory() -> None:
    """Hand the blocks torch's GPU allocators keep back to the device (a no-op on the CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None \
            and torch.backends.mps.is_available():
        mps.empty_cache()


def out_of_memory_attempt(step: Callable[..., T], *args: Any, **kwargs: Any
                          ) -> tuple[T | None, str | None]:
    """``(step(*args, **kwargs), None)``, or ``(None, the error's class name)`` when the step
    runs out of device memory: what the batched model loops call to halve a batch and run it again.
    The allocator's cache is emptied after the exception is gone (its frames hold the
    failed step's tensors until then), so that the retry starts from free memory."""
    try:
        return step(*args, **kwargs), None
    except out_of_memory_errors() as e:
        err = type(e).__name__
    release_cached_memory()
    return None, err
