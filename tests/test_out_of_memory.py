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
    monkeypatch.setattr(base, "release_cached_memory", release)  # (all loops call it there)
    text = "the lazy dog is blue" if method == "gilot" else PROMPT
    got = attrlens.explain(text, model=tiny_model, method=method, **params)
    assert got.cost["oom_retries"] == 1
    assert alive_at_release == [False]


# ---- batches far larger than the device: the same scores (a real CUDA OOM on a GPU) --------
def _huge_batches_give_the_same_scores(model, text: str, constrained) -> None:
    """The engine, the white-box game and the beam runner with batches of everything at once,
    inside ``constrained`` (a context in which such batches run out of memory), halve them
    until they fit and give the scores of default-sized batches."""
    from attrlens.api import prepare
    from attrlens.games.whitebox import WhiteBoxGame
    from attrlens.scoring.beams import BeamRunner, make_inputs
    from attrlens.scoring.engine import ScoringEngine
    from attrlens.solvers.sampling import loo_masks

    inputs, _game = prepare(text, model=model, output=" A river.", granularity="word",
                            chat=False)
    ids, out = inputs.prompt_ids, inputs.output_ids
    rows = inputs.masker.apply(loo_masks(inputs.n_features)[:200])
    want_loo = ScoringEngine(model, ids, out).token_logprobs(rows)
    wb_kw = {"alphas": np.linspace(0.0, 1.0, 32), "step_weights": np.full(32, 1 / 32),
             "out_weights": np.ones((1, len(out)))}
    want_ig = WhiteBoxGame(model, ids, out, inputs.features).path_gradients(**wb_kw).directional
    keep = np.ones((9, len(ids)), dtype=bool)
    span = max(1, len(ids) // 10)
    for r in range(1, 9):
        keep[r, span * r: span * (r + 1)] = False
    beam_in = make_inputs(ids, keep, kind="attention_off", mask_token_id=0)

    def beams(runner):
        return [m.logp.cpu().numpy() for _r, m in sorted(runner.search(beam_in),
                                                         key=lambda x: x[0])]

    want_beams = beams(BeamRunner(model, ids, beams=4, horizon=4))
    with constrained():
        eng = ScoringEngine(model, ids, out, max_batch_tokens=10**8, max_batch_size=10**6)
        got_loo = eng.token_logprobs(rows)
        wb = WhiteBoxGame(model, ids, out, inputs.features, max_batch_tokens=10**8,
                          checkpoint="off")
        got_ig = wb.path_gradients(**wb_kw).directional
        runner = BeamRunner(model, ids, beams=4, horizon=4, max_batch_tokens=10**8)
        got_beams = beams(runner)
    assert eng.counters["oom_retries"] >= 1 and wb.counters["oom_retries"] >= 1
    assert runner.counters["oom_retries"] >= 1
    np.testing.assert_allclose(got_loo, want_loo, atol=2e-4)
    np.testing.assert_allclose(got_ig, want_ig, rtol=1e-3, atol=1e-5)
    for g, w in zip(got_beams, want_beams):
        np.testing.assert_allclose(g, w, atol=2e-4)


def _river_text(n_words: int) -> str:
    words = ["river", "valley", "stone", "bridge", "farmer", "mill", "water", "summer",
             "winter", "engineer", "fish", "ladder", "town", "bank", "current", "flood"]
    return " ".join(words[i % len(words)] for i in range(n_words)) + ". What is this about?"


def test_huge_batches_are_halved_to_what_the_device_holds(tiny_model, monkeypatch):
    from contextlib import contextmanager

    @contextmanager
    def holds_eight_sequences():
        with monkeypatch.context() as m:
            _device_holds(m, tiny_model, 8)
            yield

    _huge_batches_give_the_same_scores(tiny_model, _river_text(60), holds_eight_sequences)


@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU "
                    "(ATTRLENS_TEST_DEVICE=cuda, as benchmarks/gpu_check.sh runs the tests)")
def test_a_real_cuda_out_of_memory_is_halved_and_gives_the_same_scores(default_model):
    """The same on the GPU, with the memory the process may use capped at 3 GiB above the
    model (``set_per_process_memory_fraction``): a real CUDA out-of-memory error."""
    from contextlib import contextmanager

    model = default_model
    if model.device.type != "cuda":
        pytest.skip("the embedded model is not on CUDA (set ATTRLENS_TEST_DEVICE=cuda)")

    @contextmanager
    def capped():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(model.device).total_memory
        cap = (torch.cuda.memory_allocated(model.device) + (3 << 30)) / total
        torch.cuda.set_per_process_memory_fraction(min(cap, 1.0), model.device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, model.device)
            torch.cuda.empty_cache()

    _huge_batches_give_the_same_scores(model, _river_text(600), capped)
