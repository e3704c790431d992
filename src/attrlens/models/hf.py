"""Transformers backend: local model directories, GGUF files and the embedded default model.

Loading a GGUF file through transformers de-quantizes every tensor, which takes several
seconds; the first load therefore stores a de-quantized copy (safetensors + tokenizer) in the
user cache directory, keyed by the GGUF file's sha256, and later loads read that copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import BackendError, InputError, ParameterError
from .base import ModelInfo

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")
_HASH_CACHE: dict[tuple[str, float, int], str] = {}
_LOADED: dict[tuple[str, str], HFModel] = {}


def cache_dir() -> Path:
    """Root of attrlens's on-disk cache (``$ATTRLENS_CACHE_DIR`` or ``~/.cache/attrlens``)."""
    root = os.environ.get("ATTRLENS_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "attrlens"


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per (path, mtime, size) for this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _dir_sha256(path: Path) -> str:
    """sha256 over the weight files of a model directory (names + contents)."""
    h = hashlib.sha256()
    files = sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".json")
    )
    for p in files:
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    dtype: str = "float32",
    cache: bool = True,
) -> HFModel:
    """Load a causal LM: the embedded default (``path=None``), a GGUF file or a model dir.

    Models are loaded once per process and shared. ``dtype`` is ``float32`` (default),
    ``bfloat16`` or ``float16``.
    """
    if dtype not in _DTYPES:
        raise ParameterError(
            f"The 'dtype' parameter of load_model must be one of {', '.join(_DTYPES)}. "
            f"Got {dtype!r} instead."
        )
    from .default import DEFAULT_MODEL_ID, default_gguf_path

    if path is None:
        file = default_gguf_path()
        model_id = DEFAULT_MODEL_ID
    else:
        file = Path(path).expanduser()
        if not file.exists():
            raise InputError(
                f"The model path '{path}' does not exist. Give a local transformers model "
                f"directory (with config.json) or a .gguf file, or omit --model for the "
                f"embedded default model."
            )
        model_id = str(file)
    key = (str(file.resolve()), dtype)
    if key in _LOADED:
        return _LOADED[key]
    model = _load(file, model_id=model_id, dtype=dtype, cache=cache)
    _LOADED[key] = model
    return model


def _load(file: Path, *, model_id: str, dtype: str, cache: bool) -> HFModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch_dtype = getattr(torch, dtype)
    t0 = time.perf_counter()
    if file.is_file():
        if file.suffix.lower() != ".gguf":
            raise InputError(
                f"The model file '{file}' is not a .gguf file. Give a .gguf file or a "
                f"transformers model directory (with config.json)."
            )
        sha = file_sha256(file)
        copy = cache_dir() / "models" / sha[:24]
        if cache and (copy / "config.json").is_file():
            src, kwargs = copy, {}
        else:
            src, kwargs = file.parent, {"gguf_file": file.name}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tok = AutoTokenizer.from_pretrained(str(src), **kwargs)
                mdl = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, **kwargs)
        except Exception as exc:
            raise BackendError(
                f"Could not load the GGUF model '{file}': {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. Is it a GGUF of a "
                f"transformers-supported architecture?"
            ) from exc
        if cache and "gguf_file" in kwargs:
            try:
                tmp = copy.with_name(copy.name + f".tmp{os.getpid()}")
                # the weights are already de-quantized; drop the loader's GGUF marker so
                # that transformers writes them as a plain checkpoint
                mdl.hf_quantizer = None
                if hasattr(mdl.config, "quantization_config"):
                    del mdl.config.quantization_config
                mdl.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                tmp.rename(copy)
            except OSError as exc:  # a read-only cache only costs speed
                log.warning("could not cache the de-quantized model: %s", exc)
    elif file.is_dir():
        if not (file / "config.json").is_file():
            raise InputError(
                f"The directory '{file}' is not a transformers model: it has no config.json."
            )
        sha = _dir_sha256(file)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tok = AutoTokenizer.from_pretrained(str(file))
                mdl = AutoModelForCausalLM.from_pretrained(str(file), dtype=torch.float32)
        except Exception as exc:
            raise BackendError(
                f"Could not load the model directory '{file}': {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
    else:
        raise InputError(f"The model path '{file}' is neither a file nor a directory.")
    mdl = mdl.to(torch_dtype)
    return HFModel(mdl, tok, info=ModelInfo(model_id, sha), load_s=time.perf_counter() - t0)


class HFModel:
    """A transformers causal LM with its tokenizer, as an attrlens backend.

    ``model`` is any ``AutoModelForCausalLM``; ``tokenizer`` must be a fast tokenizer (char
    offsets are needed to map features to tokens).
    """

    capabilities = frozenset(
        {"tokenize", "render_chat", "generate", "score", "embeddings", "rotary", "gradients"}
    )

    def __init__(self, model: Any, tokenizer: Any, *, info: ModelInfo, load_s: float = 0.0):
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.load_s = load_s
        if not getattr(tokenizer, "is_fast", False):
            raise BackendError(
                "attrlens needs a fast (Rust) tokenizer for char offsets; this model's "
                "tokenizer is a slow one. Save the model with a tokenizer.json."
            )
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        torch.set_grad_enabled(True)  # callers use inference_mode where they need it

    # ---- description -------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def eos_token_ids(self) -> list[int]:
        ids: set[int] = set()
        eos = self.tokenizer.eos_token_id
        if eos is not None:
            ids.add(int(eos))
        gen = getattr(self.model, "generation_config", None)
        ge = getattr(gen, "eos_token_id", None) if gen is not None else None
        if isinstance(ge, int):
            ids.add(ge)
        elif ge:
            ids.update(int(i) for i in ge)
        return sorted(ids)

    @property
    def mask_token_id(self) -> int:
        """Token used by the ``replace`` masker: unk if the vocabulary has one, else pad/eos."""
        tok = self.tokenizer
        for tid in (tok.unk_token_id, tok.pad_token_id, tok.eos_token_id):
            if tid is not None:
                return int(tid)
        return 0

    def __repr__(self) -> str:
        return f"HFModel(id={self.info.id!r}, dtype={str(self.dtype).replace('torch.', '')})"

    # ---- text --------------------------------------------------------------------------
    def render_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Render chat messages with the model's template (text, not ids)."""
        if not self.has_chat_template:
            raise InputError(
                "This model's tokenizer has no chat template; pass a plain text prompt "
                "(or use --raw) instead of chat messages."
            )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and (start, end) char offsets of each token in ``text``."""
        enc = self.tokenizer(
            text, add_special_tokens=add_special_tokens, return_offsets_mapping=True
        )
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- generation ----------------------------------------------------------------------
    def generate(self, input_ids: list[int], *, max_new_tokens: int = 64) -> list[int]:
        """Greedy continuation of ``input_ids`` (stops at EOS, which is not returned)."""
        import torch

        ids = torch.tensor([input_ids], device=self.device)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id or self.eos_token_ids[0],
                eos_token_id=self.eos_token_ids,
            )
        new = out[0, ids.shape[1]:].tolist()
        eos = set(self.eos_token_ids)
        for i, t in enumerate(new):
            if t in eos:
                return new[:i]
        return new

    # ---- model parts -----------------------------------------------------------------
    @property
    def decoder(self) -> Any:
        """The transformer body (returns hidden states; final norm included)."""
        return self.model.get_decoder()

    @property
    def lm_head(self) -> Any:
        return self.model.get_output_embeddings()

    @property
    def input_embeddings(self) -> Any:
        return self.model.get_input_embeddings()

    def rotary_module(self) -> Any:
        """The model's rotary-embedding module (RoPE models), or raise CapabilityError."""
        from ..errors import CapabilityError

        rot = getattr(self.decoder, "rotary_emb", None)
        if rot is None:
            raise CapabilityError(
                f"The model {self.info.id} has no rotary position module; RoPE-space "
                f"methods need a RoPE decoder (Llama, Qwen, Mistral, ...)."
            )
        return rot
