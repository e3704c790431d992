"""Out of device memory: every batched model loop halves its batch and runs it again
(recorded in the result's cost), a sequence that cannot be split gets its layers recomputed
or a one-line error, and nothing is left changed on the model. The error is injected into
the decoder's forward, as a device that holds at most a given number of sequences raises it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attrlens
from attrlens.errors import CapabilityError

PROMPT = "The quick brown fox jumps over the lazy dog."
OUTPUT = " Because of Rayleigh scattering."
OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _device_holds(monkeypatch, model, rows: int | None, *, unless=None) -> list[tuple[int, bool]]:
    """Make the decoder raise OOM for a batch of more than ``rows`` sequences (None: every
    batch) unless ``unless()`` holds; returns (batch rows, ran) of every call."""
    dec = model.decoder
    real = dec.forward
    calls: list[tuple[int, bool]] = []

    def forward(*args, **kwargs):
        x = kwargs.get("input_ids")
        b = int((x if x is not None else kwargs["inputs_embeds"]).shape[0])
        fits = (rows is not None and b <= rows) or (unless is not None and unless())
        calls.append((b, fits))
        if not fits:
            raise OOM("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(dec, "forward", forward)
    return calls


def _model_state(model):
    mdl = model.model
    return ([p.requires_grad for p in mdl.parameters()],
            [("forward" in vars(layer)) for layer in model.layers()],
            getattr(mdl.config, "_attn_implementation", None))


def test_ig_halves_its_chunks_and_gives_the_same_scores(tiny_model, monkeypatch):
    want = attrlens.explain(PROMPT, model=tiny_model, method="ig", steps=16, output=OUTPUT)
    assert want.cost["oom_retries"] == 0
    calls = _device_holds(monkeypatch, tiny_model, 2)
    got = attrlens.explain(PROMPT, model=tiny_model, method="ig", steps=16, output=OUTPUT)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-6)
    # the 16 path points ran as one chunk; 16, 8 and 4 failed, then 8 chunks of 2 ran
    # (and the 2 end points of the completeness check, which fit)
    assert [b for b, ran in calls if not ran] == [16, 8, 4]
    assert [b for b, ran in calls if ran and b > 1] == [2] * 9
    assert got.cost["oom_retries"] == 3
    assert got.to_dict()["cost"]["oom_retries"] == 3  # in the result file


def test_one_sequence_that_does_not_fit_recomputes_its_layers(tiny_model, monkeypatch):
    want = attrlens.explain(PROMPT, model=tiny_model, method="grad_x_input", output=OUTPUT)
    layers = tiny_model.layers()
    # fits only when the decoder layers are recomputed in the backward pass
    calls = _device_holds(monkeypatch, tiny_model, None,
                          unless=lambda: "forward" in vars(layers[0]) or not torch.is_grad_enabled())
    got = attrlens.explain(PROMPT, model=tiny_model, method="grad_x_input", output=OUTPUT)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-7)
    assert got.cost["oom_retries"] == 1 and sum(not ran for _, ran in calls) == 1
    assert "forward" not in vars(layers[0])  # unwrapped again


def test_explicit_checkpoint_off_is_kept(tiny_model, monkeypatch):
    layers = tiny_model.layers()
    _device_holds(monkeypatch, tiny_model, None,
                  unless=lambda: "forward" in vars(layers[0]) or not torch.is_grad_enabled())
    with pytest.raises(CapabilityError, match="layers recomputed: no"):
        attrlens.explain(PROMPT, model=tiny_model, method="grad_x_input", output=OUTPUT,
                         checkpoint="off")


@pytest.mark.parametrize("method", ["ig", "attention", "attention_rollout"])
def test_a_sequence_that_never_fits_is_one_line_and_leaves_the_model_as_it_was(
        tiny_model, monkeypatch, method):
    before = _model_state(tiny_model)
    want = attrlens.explain(PROMPT, model=tiny_model, method=method, output=OUTPUT)
    _device_holds(monkeypatch, tiny_model, None, unless=lambda: not torch.is_grad_enabled()
                  and method == "ig")
    with pytest.raises(CapabilityError, match="does not fit in the device's memory") as err:
        attrlens.explain(PROMPT, model=tiny_model, method=method, output=OUTPUT)
    msg = str(err.value)
    assert "\n" not in msg and "OutOfMemoryError" in msg
    assert ("layers recomputed: yes" in msg) if method == "ig" else ("attention-map" in msg)
    monkeypatch.undo()
    assert _model_state(tiny_model) == before
    again = attrlens.explain(PROMPT, model=tiny_model, method=method, output=OUTPUT)
    np.testing.assert_array_equal(again.scores, want.scores)


GILOT = {"beams": 3, "horizon": 3, "ot_iter": 200}


def test_gilot_halves_its_beam_batches_and_gives_the_same_scores(tiny_model, monkeypatch):
    want = attrlens.explain("the lazy dog is blue", model=tiny_model, method="gilot", **GILOT)
    calls = _device_holds(monkeypatch, tiny_model, 2 * GILOT["beams"])
    got = attrlens.explain("the lazy dog is blue", model=tiny_model, method="gilot", **GILOT)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-6)
    assert got.cost["oom_retries"] >= 1
    assert got.cost["oom_retries"] == sum(not ran for _, ran in calls)
    assert max(b for b, ran in calls if ran) <= 2 * GILOT["beams"]
    # the least tokens the method needs does not count the batches that failed
    assert got.extra["metadata"]["tokens_min"] == want.extra["metadata"]["tokens_min"]


def test_gilot_beams_of_one_prompt_that_do_not_fit_are_one_line(tiny_model, monkeypatch):
    _device_holds(monkeypatch, tiny_model, 1)  # the prompt's own pass, no beams
    with pytest.raises(CapabilityError, match="beam search of one prompt") as err:
        attrlens.explain("the lazy dog is blue", model=tiny_model, method="gilot", **GILOT)
    assert "\n" not in str(err.value) and "fewer beams" in str(err.value)


def test_loo_records_the_engines_retries(tiny_model, monkeypatch):
    from rich.console import Console

    from attrlens.report.terminal import render

    want = attrlens.explain(PROMPT, model=tiny_model, method="loo", output=OUTPUT)
    calls = _device_holds(monkeypatch, tiny_model, 1)  # one packed row per forward
    got = attrlens.explain(PROMPT, model=tiny_model, method="loo", output=OUTPUT)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    assert got.cost["oom_retries"] == sum(not ran for _, ran in calls) >= 1
    con = Console(record=True, width=200)
    render(got, console=con)
    assert f"{got.cost['oom_retries']} batches halved after running out of memory" in \
        con.export_text()


def test_generating_the_answer_out_of_memory_is_one_line(tiny_model, monkeypatch):
    _device_holds(monkeypatch, tiny_model, None)
    with pytest.raises(CapabilityError, match="Generating the model's answer") as err:
        attrlens.explain(PROMPT, model=tiny_model, method="loo")
    assert "\n" not in str(err.value) and "--output-text" in str(err.value)


@pytest.mark.parametrize(("method", "params", "rows"), [
    ("loo", {"output": OUTPUT}, 1), ("ig", {"output": OUTPUT}, 1),
    ("gilot", GILOT, GILOT["beams"])])  # (more than one prompt's beams)
def test_memory_is_released_after_the_failed_batch_is_gone(tiny_model, monkeypatch, method,
                                                           params, rows):
    """The allocator's cache is emptied only once nothing refers to the failed batch's
    tensors (an exception's frames hold them until it is handled)."""
    import weakref

    from attrlens.models import base
    from attrlens.scoring import beams, engine

    dec = tiny_model.decoder
    real = dec.forward
    held: list[weakref.ref] = []
    alive_at_release: list[bool] = []

    def forward(*args, **kwargs):
        x = kwargs.get("input_ids")
        b = int((x if x is not None else kwargs["inputs_embeds"]).shape[0])
        if b > rows and not held:
            activations = torch.empty(1 << 16)  # what the failed forward had allocated
            held.append(weakref.ref(activations))
            raise OOM("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    def release():
        alive_at_release.append(held[-1]() is not None)

    monkeypatch.setattr(dec, "forward", forward)
    for mod in (base, beams, engine):
        monkeypatch.setattr(mod, "release_cached_memory", release)
    text = "the lazy dog is blue" if method == "gilot" else PROMPT
    got = attrlens.explain(text, model=tiny_model, method=method, **params)
    assert got.cost["oom_retries"] == 1
    assert alive_at_release == [False]
