"""Device and dtype resolution (no GPU needed: CUDA/MPS presence is simulated)."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_model, save_model_dir

from attrlens.errors import BackendError, ParameterError
from attrlens.models import hf
from attrlens.models.hf import cpu_auto_dtype, cpu_dtype_file, resolve_device, resolve_dtype


@pytest.fixture
def no_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A private cache dir, and the tiny model counted as big enough to measure."""
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(hf, "_MIN_MEASURE_PARAMS", 0)
    return tmp_path


def test_tiny_models_are_not_measured(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(hf, "_time_forward", lambda *a: pytest.fail("measured a tiny model"))
    assert cpu_auto_dtype(make_tiny_model().model) == "float32"
    assert not cpu_dtype_file().exists()


def test_auto_device_without_gpu_is_cpu(no_gpu) -> None:
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"


def test_auto_device_prefers_cuda(two_gpus) -> None:
    assert resolve_device("auto") == "cuda:0"
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(BackendError, match=r"only 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "cuda:", "cuda:x", "tpu", "", None, 0])
def test_malformed_device_names_are_refused(bad) -> None:
    with pytest.raises(ParameterError, match="'device' parameter of load_model"):
        resolve_device(bad)


def test_missing_hardware_is_a_clear_error(no_gpu) -> None:
    with pytest.raises(BackendError, match="sees no CUDA GPU.*device='cpu'"):
        resolve_device("cuda")
    with pytest.raises(BackendError, match="no MPS"):
        resolve_device("mps")


def test_load_model_refuses_bad_device_and_dtype_before_loading(tmp_path) -> None:
    with pytest.raises(ParameterError, match="'device'"):
        hf.load_model(tmp_path / "missing", device="gpu")
    with pytest.raises(ParameterError, match="'dtype'.*auto, float32, bfloat16, float16"):
        hf.load_model(tmp_path / "missing", device="cpu", dtype="fp8")


@pytest.mark.parametrize(("major", "want"), [(9, "bfloat16"), (8, "bfloat16"), (7, "float16")])
def test_auto_dtype_on_cuda(monkeypatch, major, want) -> None:
    import torch

    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (major, 0))
    assert resolve_dtype("auto", "cuda:1") == want
    assert resolve_dtype("float32", "cuda:1") == "float32"


def test_auto_dtype_on_cpu_is_measured() -> None:
    assert resolve_dtype("auto", "cpu") is None
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_cpu_choice_is_measured_once_and_remembered(cache, monkeypatch) -> None:
    tiny = make_tiny_model()
    calls: list[str] = []
    real = hf._time_forward

    def timed(model, ids, params):
        calls.append("bf16" if params else "fp32")
        assert ids.shape == (2, 64)
        return real(model, ids, params)

    monkeypatch.setattr(hf, "_time_forward", timed)
    first = cpu_auto_dtype(tiny.model, model_id="tiny")
    assert first in ("float32", "bfloat16")
    assert calls == ["fp32", "bf16"] * 4  # warm-up, then 3 alternating rounds
    # the model's weights stayed float32 (bf16 was timed on copies of the weights)
    assert all(str(p.dtype) == "torch.float32" for p in tiny.model.parameters())
    data = json.loads(cpu_dtype_file().read_text())
    (entry,) = data.values()
    assert entry["dtype"] == first and entry["measured_on"] == "tiny"
    assert entry["float32_s"] > 0 and entry["bfloat16_s"] > 0
    assert str(cpu_dtype_file()).startswith(str(cache))

    def boom(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(hf, "_time_forward", boom)
    assert cpu_auto_dtype(tiny.model) == first


@pytest.mark.parametrize(("fp32_s", "bf16_s", "want"), [
    (1.0, 0.5, "bfloat16"), (1.0, 0.9, "float32"), (1.0, 7.0, "float32"),
])
def test_cpu_choice_needs_a_clear_bf16_win(cache, monkeypatch, fp32_s, bf16_s, want) -> None:
    tiny = make_tiny_model()
    monkeypatch.setattr(hf, "_time_forward", lambda m, ids, p: bf16_s if p else fp32_s)
    assert cpu_auto_dtype(tiny.model) == want


def test_remembered_choice_sets_the_loaded_dtype(cache, monkeypatch, tmp_path) -> None:
    tiny = make_tiny_model()
    d = save_model_dir(tiny, tmp_path / "m")
    key, _ = hf._cpu_key()
    cpu_dtype_file().parent.mkdir(parents=True, exist_ok=True)
    cpu_dtype_file().write_text(json.dumps({key: {"dtype": "bfloat16"}}))
    monkeypatch.setattr(hf, "_time_forward", lambda *a: pytest.fail("measured again"))
    m = hf.load_model(d, device="cpu", dtype="auto")
    assert m.info.dtype == "bfloat16" and m.info.device == "cpu"
    assert str(m.dtype) == "torch.bfloat16"
    # a corrupt file is re-measured, not an error
    cpu_dtype_file().write_text("{not json")
    monkeypatch.setattr(hf, "_time_forward", lambda m, ids, p: 2.0 if p else 1.0)
    hf._LOADED.clear()
    m2 = hf.load_model(d, device="cpu", dtype="auto")
    assert m2.info.dtype == "float32"
    assert json.loads(cpu_dtype_file().read_text())[key]["dtype"] == "float32"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("bias", [False, True])
def test_token_logprobs_by_vocabulary_slices_equal_log_softmax(dtype, bias) -> None:
    """The running log-sum-exp over vocabulary slices (several slices here) equals the
    log-softmax of the float32 logits, also for a bf16 model and a head with a bias."""
    import copy

    import torch

    model = copy.deepcopy(make_tiny_model(seed=4))
    head = model.lm_head
    if bias:
        head.bias = torch.nn.Parameter(torch.randn(head.out_features))
    model.model.to(getattr(torch, dtype))
    V = head.out_features
    hidden = torch.randn(5, 3, head.in_features).to(getattr(torch, dtype))
    tok = torch.tensor([3, V - 1, 17])
    with torch.no_grad():
        want = torch.log_softmax(model.output_logits(hidden), -1)
        want = want.gather(-1, tok.expand(5, 3)[..., None])[..., 0]
        got = model.output_token_logprobs(hidden, tok, budget=1, min_slice=V // 5 + 1)
    assert got.dtype == torch.float32 and got.shape == (5, 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert float(want.std()) > 0.1  # not a degenerate case


def test_bf16_head_products_are_exact_and_restore_the_setting(monkeypatch) -> None:
    """A bf16 model's float32 head on the CPU's bf16 matrix units (``bf16_products``): its
    inputs are bf16 numbers, so nothing is rounded and the log-probs equal a float64
    computation to float32 rounding, as with plain float32 products. The products run in
    the bf16 math mode where this torch and CPU have it (never otherwise), and torch's
    process-wide setting is back afterwards, also after an error."""
    import copy

    import torch

    from attrlens.models.hf import bf16_products

    model = copy.deepcopy(make_tiny_model(seed=4))
    model.model.to(torch.bfloat16)
    V = model.lm_head.out_features
    hidden = (3 * torch.randn(4, 3, model.lm_head.in_features)).to(torch.bfloat16)
    tok = torch.tensor([3, V - 1, 17])
    z = hidden.double() @ model.lm_head.weight.double().t()
    want = torch.log_softmax(z, -1).gather(-1, tok.expand(4, 3)[..., None])[..., 0].float()
    mat = getattr(torch.backends.mkldnn, "matmul", None)
    setting = (lambda: mat.fp32_precision) if hasattr(mat, "fp32_precision") else (lambda: None)
    before = setting()
    supported = before is not None and (torch.cpu._is_avx512_bf16_supported()
                                        or torch.cpu._is_amx_tile_supported())
    modes: list[object] = []
    real_mm = torch.mm

    def spy(*args, **kwargs):
        modes.append(setting())
        return real_mm(*args, **kwargs)

    monkeypatch.setattr(torch, "mm", spy)
    for on in (True, False):
        model.bf16_head_products = on
        modes.clear()
        got = model.output_token_logprobs(hidden, tok, budget=1, min_slice=V // 5 + 1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert len(modes) == 5
        assert all((m == "bf16") == (on and supported) for m in modes), (on, modes)
        assert setting() == before
        model.bf16_head_products = True

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(torch, "mm", boom)
    with pytest.raises(RuntimeError, match="boom"), bf16_products():
        torch.mm(hidden.float()[0], hidden.float()[0].t())
    assert setting() == before
    with bf16_products(), bf16_products():  # nested blocks (one thread) do not deadlock
        assert setting() == ("bf16" if supported else before)
    assert setting() == before


def test_token_logprobs_need_no_grad_context_and_keep_no_graph() -> None:
    """Called outside ``no_grad`` on a model whose weights require grad (its reused slice
    buffers would otherwise refuse the head's weights), the head gives the same values
    and builds no graph."""
    import torch

    model = make_tiny_model(seed=4)
    head = model.lm_head
    assert head.weight.requires_grad
    V = head.out_features
    hidden = torch.randn(2, 3, head.in_features)
    tok = torch.tensor([1, 5, V - 2])
    got = model.output_token_logprobs(hidden, tok, budget=1, min_slice=V // 3 + 1)
    assert not got.requires_grad
    with torch.no_grad():
        want = torch.log_softmax(model.output_logits(hidden), -1)
    torch.testing.assert_close(got, want.gather(-1, tok.expand(2, 3)[..., None])[..., 0],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize(("device", "free", "want"), [
    ("cpu", 10 << 30, 4096),            # measured on CPUs: larger forwards gain nothing
    ("cuda", None, 4096),               # free memory unknown
    ("cuda", 1 << 20, 4096),            # the floor
    ("cuda", 80 << 30, 65536),          # the cap
    ("cuda", 100 << 20, None),          # between: a quarter of free memory per token's bytes
])
def test_scoring_batch_tokens_follow_the_device(monkeypatch, device, free, want):
    import torch

    m = make_tiny_model()
    m.device = torch.device(device, 0) if device == "cuda" else torch.device("cpu")
    monkeypatch.setattr(m, "free_memory", lambda: free)
    per_token = (6 * 64 + 3 * 128) * 4  # the tiny model: hidden 64, intermediate 128, fp32
    got = m.scoring_batch_tokens()
    assert got == (want if want is not None else (100 << 20) // 4 // per_token)
    assert 4096 <= got <= 65536


def test_results_record_the_scoring_batch_size():
    import attrlens

    m = make_tiny_model()
    a = attrlens.explain("The quick brown fox", model=m, output=" jumps")
    assert a.params["scoring_batch_tokens"] == 4096
