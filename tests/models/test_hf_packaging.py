"""Packaging: torch as a range, heavy features behind extras with errors naming the extra, a
stated transformers range that holds the installed version."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from attrlens.errors import BackendError, CapabilityError

ROOT = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = re.match(r"([A-Za-z0-9_.-]+)(.*)", r)
        out[m.group(1).lower()] = m.group(2).strip()
    return out


def test_torch_is_a_range_and_heavy_features_are_extras(project) -> None:
    core = _names(project["dependencies"])
    assert core["torch"].startswith(">=") and "==" not in core["torch"]
    for name in ("xllamacpp", "lightgbm", "galois", "sentence-transformers", "peft"):
        assert name not in core, f"{name} must not be a core dependency"
    extras = {k: _names(v) for k, v in project["optional-dependencies"].items()}
    assert "xllamacpp" in extras["server"]
    assert "lightgbm" in extras["proxyspex"]
    assert "peft" in extras["peft"]
    assert "galois" in extras["dev"]
    assert not any("sentence-transformers" in e for e in extras.values())
    make = (ROOT / "Makefile").read_text()
    # make demo/test install everything
    assert 'install -e ".[dev,server,proxyspex,peft]"' in make
    assert "install torch==" in make  # the CPU wheel pin stays in the Makefile


def test_installed_transformers_is_inside_the_stated_range(project) -> None:
    import transformers

    spec = _names(project["dependencies"])["transformers"]
    low = re.search(r">=\s*([\d.]+)", spec)
    high = re.search(r"<\s*([\d.]+)", spec)
    assert low and high, f"transformers needs a stated range; got {spec!r}"

    def ver(s: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", s)[:3])

    installed = ver(transformers.__version__)
    assert ver(low.group(1)) <= installed < ver(high.group(1))
    # both ends are tested: CI runs the suite again on the lowest release of the range
    assert "make test-compat" in (ROOT / ".ci" / "run").read_text()
    assert '"transformers==$(TF_LOW).*"' in (ROOT / "Makefile").read_text()


def test_installed_torch_is_inside_the_stated_range(project) -> None:
    import torch

    spec = _names(project["dependencies"])["torch"]
    low = re.search(r">=\s*([\d.]+)", spec)
    assert low, f"torch needs a stated lower bound; got {spec!r}"

    def ver(s: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", s)[:2])

    assert ver(low.group(1)) <= ver(torch.__version__)
    # transformers 5 disables itself below torch 2.6: the range must not promise less
    import transformers

    if ver(transformers.__version__) >= (5, 0):
        assert ver(low.group(1)) >= (2, 6)
    # the lowest torch is tested too (CI: make test-compat)
    assert '"torch==$(TORCH_LOW).*"' in (ROOT / "Makefile").read_text()


def test_proxyspex_without_lightgbm_names_the_extra(monkeypatch) -> None:
    import numpy as np

    from attrlens.solvers.trees import proxyspex_fit

    monkeypatch.setitem(sys.modules, "lightgbm", None)  # import lightgbm -> ImportError
    z = np.random.default_rng(0).integers(0, 2, size=(20, 3))
    with pytest.raises(CapabilityError, match=r"pip install 'attrlens\[proxyspex\]'"):
        proxyspex_fit(z, z.sum(1).astype(float), max_order=1)


def test_server_without_xllamacpp_names_the_extra(monkeypatch, tmp_path) -> None:
    from attrlens.models.server import LlamaServer

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    with pytest.raises(BackendError, match=r"pip install 'attrlens\[server\]'"):
        LlamaServer(gguf).start()


def test_adapter_without_peft_names_the_extra(monkeypatch, tmp_path) -> None:
    from attrlens.models.hf import _merge_adapter

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(CapabilityError, match=r"pip install 'attrlens\[peft\]'"):
        _merge_adapter(object(), tmp_path)
