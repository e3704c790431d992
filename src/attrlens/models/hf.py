"""Transformers backend: local model directories, GGUF files and the embedded default model.

Loading a GGUF file through transformers de-quantizes every tensor, which takes several
seconds; the first load therefore stores a de-quantized copy (safetensors + tokenizer) in the
user cache directory, keyed by the GGUF file's sha256, and later loads read that copy.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import copy
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BackendError, CapabilityError, InputError, ParameterError
from .base import LOAD_KWARGS, ModelInfo

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")
_HASH_CACHE: dict[tuple[str, float, int], str] = {}
_LOADED: dict[tuple[str, str, str, bool], tuple[tuple, HFModel]] = {}


def cache_dir() -> Path:
    """Root of attrlens's on-disk cache (``$ATTRLENS_CACHE_DIR`` or ``~/.cache/attrlens``):
    the call cache's resolver, so both read ``~`` alike (the model copies went to a folder
    named ``~`` under the working directory while the call cache expanded it)."""
    from .cache import default_cache_dir

    return default_cache_dir()


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


#: the files of a model directory that decide what it computes and how it reads text:
#: weights, configs (config, generation and tokenizer settings are .json), its own code,
#: chat templates (.jinja), sentencepiece (.model) and BPE/WordPiece (.txt) vocabularies
_MODEL_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".py", ".jinja", ".model",
                   ".txt", ".tiktoken")
#: a sub-folder whose files count too (transformers' named extra chat templates)
_MODEL_SUBDIRS = ("additional_chat_templates",)


def _model_files(path: Path) -> list[Path]:
    """The files of ``path`` (a model file, or a directory) that :func:`_dir_sha256`
    covers, in a fixed order."""
    if not path.is_dir():
        return [path]
    files = [p for p in path.iterdir() if p.is_file() and p.suffix in _MODEL_SUFFIXES]
    for sub in _MODEL_SUBDIRS:
        if (path / sub).is_dir():
            files += [p for p in (path / sub).iterdir()
                      if p.is_file() and p.suffix in _MODEL_SUFFIXES]
    return sorted(files)


def _dir_sha256(path: Path) -> str:
    """sha256 over the files of a model directory that decide its outputs (names relative
    to it + contents): weights, configs, its own modeling code (a model with its own code
    computes what its .py files say), chat templates and tokenizer vocabularies."""
    h = hashlib.sha256()
    for p in _model_files(path):
        h.update(p.relative_to(path).as_posix().encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def _files_stamp(path: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of each file :func:`_dir_sha256` covers: changes when the
    model on disk does, without reading it."""
    out = []
    for p in _model_files(path):
        st = p.stat()
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)


_DEVICE_HELP = "'auto', 'cpu', 'cuda', 'cuda:N' (N = a GPU index) or 'mps'"
#: bf16 is chosen on a CPU only when it is at least this much faster than fp32 (it is less
#: precise, so a tie goes to fp32)
_CPU_BF16_MARGIN = 0.8
#: models smaller than this are bound by per-op overhead, not by matmul speed: their timing
#: says nothing about the CPU's bf16 kernels, so they run in fp32 and are not recorded
_MIN_MEASURE_PARAMS = 20_000_000


def resolve_device(device: str) -> str:
    """Check a device name and resolve ``auto``: CUDA if present, else MPS, else CPU.

    Returns a concrete name (``cpu``, ``mps`` or ``cuda:N``). Raises ParameterError for a
    malformed name and BackendError for hardware this torch build cannot see.
    """
    import torch

    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ParameterError(
            f"The 'device' parameter of load_model must be one of {_DEVICE_HELP}. "
            f"Got {device!r} instead."
        )
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if device == "auto":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        return "mps" if has_mps else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendError(
                f"device={device!r} was asked for, but this torch ({torch.__version__}) sees no "
                f"CUDA GPU. Install a CUDA build of torch, or use device='cpu' (or 'auto')."
            )
        idx = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        n = torch.cuda.device_count()
        if idx >= n:
            raise BackendError(
                f"device={device!r} was asked for, but only {n} CUDA device(s) are visible "
                f"(cuda:0 .. cuda:{n - 1})."
            )
        return f"cuda:{idx}"
    if device == "mps" and not has_mps:
        raise BackendError(
            "device='mps' was asked for, but this torch build or machine has no MPS (Apple "
            "GPU) support; use device='cpu' (or 'auto')."
        )
    return device


def resolve_dtype(dtype: str, device: str) -> str | None:
    """The dtype name for ``device``: the given one, or for ``auto`` bf16 on a GPU that
    supports it (else fp16); ``None`` on a CPU, where it is measured (:func:`cpu_auto_dtype`).
    """
    import torch

    if dtype not in ("auto", *_DTYPES):
        raise ParameterError(
            f"The 'dtype' parameter of load_model must be one of auto, {', '.join(_DTYPES)}. "
            f"Got {dtype!r} instead."
        )
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if _cuda_bf16(int(device.split(":")[1])) else "float16"
    if device == "mps":
        try:
            x = torch.ones((2, 2), dtype=torch.bfloat16, device="mps")
            (x @ x).cpu()
            return "bfloat16"
        except (RuntimeError, TypeError):
            return "float16"
    return None


def _cuda_bf16(index: int) -> bool:
    """Whether CUDA device ``index`` computes in bfloat16 natively (Ampere or newer; ROCm)."""
    import torch

    if getattr(torch.version, "hip", None):
        return True
    major, _minor = torch.cuda.get_device_capability(index)
    return major >= 8


def _cpu_key() -> tuple[str, str]:
    """(key, description) of this CPU's instruction set (as torch detects it: vector width
    and the bf16/AMX/VNNI extensions that decide which dtype is faster) and torch's version."""
    import platform

    import torch

    caps = sorted(
        name[4:-10]
        for name in dir(torch.cpu)
        if name.startswith("_is_") and name.endswith("_supported") and getattr(torch.cpu, name)()
    )
    level = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    name = platform.processor() or platform.machine()
    raw = f"{platform.machine()}|{level}|{','.join(caps)}|torch={torch.__version__}"
    desc = f"{name} {level} ({', '.join(caps) or 'no extensions'}) / torch {torch.__version__}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16], desc


def cpu_dtype_file() -> Path:
    """JSON file that remembers the measured CPU dtype choice per (CPU flags, torch)."""
    return model_copies_dir() / "cpu_dtype.json"


def _without_cache(module: Any) -> dict[str, Any]:
    """``use_cache=False`` for a forward that takes it; nothing for one that does not (OpenAI
    GPT in transformers 4.x, which keeps no cache)."""
    import inspect

    params = inspect.signature(type(module).forward).parameters.values()
    takes = any(p.name == "use_cache" or p.kind is p.VAR_KEYWORD for p in params)
    return {"use_cache": False} if takes else {}


def _time_forward(model: Any, ids: Any, params: dict[str, Any] | None) -> float:
    """Seconds of one forward of ``model`` on ``ids`` (b, s), with ``params`` substituted for
    its parameters when given (``torch.func.functional_call``)."""
    import torch
    from torch.func import functional_call

    kwargs = {"input_ids": ids, **_without_cache(model)}
    with torch.inference_mode():
        t0 = time.perf_counter()
        if params is None:
            model(**kwargs)
        else:
            functional_call(model, params, args=(), kwargs=kwargs)
        return time.perf_counter() - t0


def _text_config(cfg: Any) -> Any:
    """The language model's config: the text part of a multimodal config, else ``cfg``."""
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def cpu_auto_dtype(model: Any, *, model_id: str = "?") -> str:
    """The faster of float32 and bfloat16 for this CPU, measured once and remembered.

    ``model`` is a float32 transformers causal LM on the CPU; the first call times short
    forwards (2 x 64 tokens; a warm-up and 3 alternating rounds, best of each) of it in
    float32 and, through ``torch.func.functional_call`` with
    bf16 copies of the weights (no copy of the module), in bfloat16. bf16 is chosen only when
    it is at least 1/0.8 = 1.25x faster. Models under 20M parameters (overhead-bound) run in
    float32 without a measurement. The choice is stored in :func:`cpu_dtype_file`
    keyed by the CPU's flags and the torch version, so later loads do not measure again.
    """
    import torch

    key, desc = _cpu_key()
    path = cpu_dtype_file()
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("dtype") in ("float32", "bfloat16"):
        return str(entry["dtype"])
    params = dict(model.named_parameters())
    n_params = sum(p.numel() for p in params.values())
    if n_params < _MIN_MEASURE_PARAMS:
        return "float32"
    need = n_params * 2
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = None
    if avail is not None and need > avail // 2:
        log.info("not enough free memory to time bf16 on this CPU; using float32")
        return "float32"
    cfg = _text_config(model.config)
    vocab = int(getattr(cfg, "vocab_size", 0) or 2)
    seq = max(2, min(64, int(getattr(cfg, "max_position_embeddings", 64) or 64)))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, seq), generator=gen)
    with torch.inference_mode():
        bf = {n: p.detach().to(torch.bfloat16) for n, p in params.items()}
    # one warm-up each, then three alternating rounds, best of each: alternating keeps a
    # change in the machine's load from favouring whichever dtype ran in the quiet moment
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for rnd in range(4):
        for name, sub in (("float32", None), ("bfloat16", bf)):
            t = _time_forward(model, ids, sub)
            if rnd:
                times[name].append(t)
    del bf
    t32, t16 = min(times["float32"]), min(times["bfloat16"])
    choice = "bfloat16" if t16 < _CPU_BF16_MARGIN * t32 else "float32"
    log.info("CPU dtype: fp32 %.3fs, bf16 %.3fs per forward -> %s", t32, t16, choice)
    known[key] = {
        "dtype": choice,
        "float32_s": round(t32, 5),
        "bfloat16_s": round(t16, 5),
        "cpu": desc,
        "threads": torch.get_num_threads(),
        "measured_on": model_id,
        "tokens": int(ids.numel()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs a re-measurement
        log.warning("could not record the CPU dtype choice in %s: %s", path, exc)
    return choice


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache: bool = True,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> HFModel:
    """Load a causal LM: the embedded default (``path=None``), a GGUF file, a model dir, or a
    PEFT adapter dir (merged into the local base model its adapter_config.json names).

    device: ``auto`` (CUDA if present, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N``
            or ``mps``.
    dtype:  ``auto`` (bf16 on GPUs that support it, else fp16; on a CPU the faster of fp32
            and bf16, measured once per CPU and torch version and remembered, see
            :func:`cpu_auto_dtype`), ``float32``, ``bfloat16`` or ``float16``.
    trust_remote_code: run the modeling (and tokenizer) code that a model directory ships
            with its weights (``auto_map`` in its config.json), as transformers'
            ``trust_remote_code=True``; off by default, and such a directory is then refused
            with a one-line error (never an interactive prompt).
    progress: show the progress bar of a GGUF file's one-time conversion (on stderr).
    Models are loaded once per process (per path, device and dtype) and shared, and loaded
    again when their files on disk change.
    """
    if isinstance(path, str) and not path.strip():
        # ('' was read as the current directory: "The directory '.' is not a model")
        raise ParameterError("The model path is empty; give a model directory, a .gguf file "
                             "or a Hub id in the local cache, or leave it out for the "
                             "embedded default.")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ParameterError(
            f"The model path must be a string or a path (a model directory, a .gguf file or "
            f"a Hub id in the local cache), or None for the embedded default; got "
            f"{type(path).__name__}. A transformers model object needs no loading: pass it "
            f"as explain(prompt, model=m, tokenizer=tok)."
        )
    dev = resolve_device(device)
    want = resolve_dtype(dtype, dev)
    from .default import DEFAULT_MODEL_ID, default_gguf_path

    if path is None:
        file = default_gguf_path()
        model_id = DEFAULT_MODEL_ID
    else:
        file = Path(path).expanduser()
        model_id = str(file)
        if not file.exists():
            file = _cached_hub_model(str(path))
            model_id = str(path)
    # (trust_remote_code too: a model loaded with it once is not handed to a call without it)
    key = (str(file.resolve()), dev, dtype, bool(trust_remote_code))
    stamp = _files_stamp(file)
    if key in _LOADED and _LOADED[key][0] == stamp:
        return _LOADED[key][1]
    with quiet_transformers():
        model = _load(file, model_id=model_id, device=dev, dtype=want, cache=cache,
                      trust_remote_code=trust_remote_code, progress=progress)
    _LOADED[key] = (stamp, model)  # a model changed on disk since is loaded again
    return model


#: a Hugging Face Hub model id: ``owner/name``
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _cached_hub_model(name: str) -> Path:
    """The local snapshot directory of the Hub model ``name`` (``owner/name``) in the
    Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), as a model that was downloaded
    before; nothing is downloaded. A one-line InputError where ``name`` is neither that
    nor an existing path."""
    missing = (f"The model path '{name}' does not exist{_near_paths(name)}. Give a local "
               f"transformers model directory (with config.json), a .gguf file, a Hub model "
               f"id already in the local Hugging Face cache, or omit --model for the embedded "
               f"default model.")
    # a path whose folder exists here is a mistyped path, not a Hub id (models/llama-3)
    local = Path(name).expanduser().parent
    if (not _HUB_ID.fullmatch(name) or name.startswith((".", "~"))
            or (str(local) not in ("", ".") and local.is_dir())):
        raise InputError(missing)
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(repo_id=name, local_files_only=True))
    # not in the cache (LocalEntryNotFoundError is an OSError), not a valid id (ValueError),
    # or no hub library: attrlens downloads nothing
    except (ImportError, OSError, ValueError):
        raise InputError(
            f"The model '{name}' is neither a local path nor a Hub model in the local Hugging "
            f"Face cache, and attrlens downloads nothing: fetch it first (`hf download "
            f"{name}`) or give a local model directory or .gguf file."
        ) from None
    if (snap / "config.json").is_file():
        return snap
    ggufs = sorted(snap.glob("*.gguf"))
    if len(ggufs) == 1:  # a repository of one GGUF file
        return ggufs[0]
    if ggufs:
        raise InputError(
            f"The Hub model '{name}' in the local Hugging Face cache holds {len(ggufs)} GGUF "
            f"files ({', '.join(g.name for g in ggufs[:4])}{', ...' if len(ggufs) > 4 else ''}); "
            f"give one of them as the model path ({snap}/<file>.gguf)."
        )
    raise InputError(
        f"The Hub model '{name}' in the local Hugging Face cache ({snap}) has no config.json "
        f"nor a .gguf file (a partial download?): fetch it again (`hf download {name}`)."
    )


def _near_paths(name: str) -> str:
    """' (did you mean ...?)' naming the entries of ``name``'s folder that are spelled
    most like it, or '' where there are none (or no such folder)."""
    import difflib

    p = Path(name).expanduser()
    folder = p.parent
    try:
        names = [q.name for q in folder.iterdir()] if folder.is_dir() else []
    except OSError:
        names = []
    near = difflib.get_close_matches(p.name, names, n=3, cutoff=0.6)
    if not near:
        return ""
    shown = [str(folder / n) if str(folder) != "." else n for n in near]
    return f" (did you mean {' or '.join(repr(s) for s in shown)}?)"


def model_copies_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the de-quantized GGUF copies: ``models`` under the cache root (``root``,
    default :func:`cache_dir`)."""
    base = Path(root).expanduser() if root is not None else cache_dir()
    return base / "models"


def gguf_copy_dir(sha: str) -> Path:
    """Where the de-quantized copy of the GGUF file with this sha256 is kept: one copy per
    transformers major version, since a checkpoint written by one major (its tokenizer class
    names, config keys) need not load in another."""
    import transformers

    major = transformers.__version__.split(".")[0]
    return model_copies_dir() / f"{sha[:24]}.transformers{major}"


COPY_SOURCE_FILE = "attrlens_source.json"


def model_copies(root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The de-quantized GGUF copies under ``root`` (default: the cache root), oldest first:
    ``{"name", "path", "size_bytes", "modified" (unix time), "source" (the GGUF file it was
    converted from, or None for a copy written before that was recorded), "complete"
    (False: a conversion that was stopped midway; it is never read)}``."""
    base = model_copies_dir(root)
    out: list[dict[str, Any]] = []
    if not base.is_dir():
        return out
    for d in base.iterdir():
        if not d.is_dir() or ".transformers" not in d.name:
            continue
        size = 0
        for f in d.rglob("*"):
            with contextlib.suppress(OSError):
                size += f.stat().st_size if f.is_file() else 0
        source = None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            source = json.loads((d / COPY_SOURCE_FILE).read_text(encoding="utf-8")).get("gguf")
        out.append({"name": d.name, "path": str(d), "size_bytes": size,
                    "modified": d.stat().st_mtime,
                    "source": source if isinstance(source, str) else None,
                    "complete": ".tmp" not in d.name and (d / "config.json").is_file()})
    return sorted(out, key=lambda c: (c["modified"], c["name"]))


def delete_model_copies(root: str | os.PathLike[str] | None = None) -> tuple[int, int]:
    """Delete every de-quantized GGUF copy (the next load of each GGUF converts it again).
    Returns (copies deleted, bytes freed)."""
    n = freed = 0
    for c in model_copies(root):
        shutil.rmtree(c["path"], ignore_errors=True)
        if not Path(c["path"]).exists():
            n, freed = n + 1, freed + c["size_bytes"]
    return n, freed


def today() -> str:
    """Today's date, ``YYYY-MM-DD``, on the machine's clock (the clock transformers' chat
    templates read)."""
    return datetime.date.today().isoformat()


def parse_template_date(date: Any) -> str:
    """``date`` as ``YYYY-MM-DD``, or a one-line ParameterError."""
    try:
        return datetime.date.fromisoformat(str(date)).isoformat()
    except ValueError:
        raise ParameterError(
            f"The template date {date!r} is not a date; give it as YYYY-MM-DD, e.g. "
            f"{today()}."
        ) from None


#: a call of the chat templates' clock function with a literal format string
_STRFTIME_CALL = re.compile(
    r"""strftime_now\(\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*\)""")


@functools.lru_cache(maxsize=32)
def _dated_template(template: str, date: str) -> str | None:
    """``template`` with each ``strftime_now("<format>")`` replaced by the string it gives at
    midnight of ``date`` (transformers passes templates plain data only, so the function
    itself cannot be replaced; ``strftime_now is defined`` stays true); the template
    unchanged if it has no such call; None if it calls ``strftime_now`` in another form (a
    format that is not a literal)."""
    moment = datetime.datetime.combine(datetime.date.fromisoformat(date), datetime.time())

    def fixed(match: re.Match[str]) -> str:
        return json.dumps(moment.strftime(ast.literal_eval(match.group(1))), ensure_ascii=False)

    out = _STRFTIME_CALL.sub(fixed, template)
    return None if re.search(r"strftime_now\s*\(", out) else out


def _from_pretrained(src: Path, *, dtype: str | None, device: str, **kwargs: Any) -> Any:
    """AutoModelForCausalLM.from_pretrained in ``dtype`` (None: float32), placed on a CUDA
    device directly (no CPU copy of the weights) or left on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    extra: dict[str, Any] = {}
    if device.startswith("cuda"):
        extra["device_map"] = {"": device}
    torch_dtype = getattr(torch, dtype) if dtype else torch.float32
    return AutoModelForCausalLM.from_pretrained(str(src), dtype=torch_dtype, **extra,
                                                **LOAD_KWARGS, **kwargs)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' loading chatter (its info and warning logs, its progress bars) off
    while attrlens loads a model, and back as the caller had it afterwards (it stayed off
    for the whole process: the caller's own transformers logs went quiet)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _cast_like_from_pretrained(mdl: Any, device: Any, dtype: Any) -> Any:
    """``mdl.to(device, dtype)`` that keeps computed buffers (non-persistent: not in the
    checkpoint, e.g. RoPE's ``inv_freq``) in the dtype they were made in, as
    ``from_pretrained(dtype=...)`` does. A plain ``.to`` rounded ``inv_freq`` to bf16: a
    GGUF file's first load (converted, then cast) and ``dtype="auto"`` scored 0.34 nats away
    from every later load of the same weights in the same recorded dtype."""
    kept = []
    for mod in mdl.modules():
        for name in getattr(mod, "_non_persistent_buffers_set", ()):
            buf = mod._buffers.get(name)
            if buf is not None and buf.is_floating_point():
                kept.append((mod, name, buf))
    mdl = mdl.to(device=device, dtype=dtype)
    for mod, name, buf in kept:
        mod._buffers[name] = buf.to(device=device)
    return mdl


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message ('' if it has none)."""
    text = str(exc)
    return text.splitlines()[0] if text else ""


def _gguf_flags(file: Path) -> dict[str, bool]:
    """The GGUF file's ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` flags, where set."""
    from gguf import GGUFReader

    out: dict[str, bool] = {}
    reader = GGUFReader(str(file))
    for flag in ("add_bos_token", "add_eos_token"):
        field = reader.fields.get(f"tokenizer.ggml.{flag}")
        if field is not None and field.data:
            out[flag] = bool(field.parts[field.data[0]][0])
    return out


def _follow_gguf_special_tokens(tok: Any, file: Path) -> bool:
    """Make the tokenizer add BOS/EOS as the GGUF file says. transformers 4.x converts a GGUF
    tokenizer whose file says ``add_bos_token = false`` (SmolLM2's) into one that prepends
    BOS to every plain prompt (5.x follows the file): the same weights would then score other
    token sequences than on 5.x or on llama.cpp serving the same file. True if it changed
    the tokenizer."""
    changed = False
    for flag, want in _gguf_flags(file).items():
        if getattr(tok, flag, want) != want:
            changed = True
            try:
                setattr(tok, flag, want)  # the fast tokenizers rebuild their post-processor
            except (AttributeError, ValueError) as exc:
                raise BackendError(
                    f"The GGUF file '{file}' sets {flag}={want}, which this tokenizer "
                    f"({type(tok).__name__}) cannot follow: {exc}. Upgrade transformers."
                ) from exc
    return changed


def _adapter_base(adapter: Path) -> Path:
    """The local base model directory of a PEFT adapter directory (its adapter_config.json's
    ``base_model_name_or_path``: a path as given, relative to the adapter, or a Hub id whose
    snapshot is in the local Hugging Face cache)."""
    try:
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        base = str(cfg["base_model_name_or_path"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"The adapter directory '{adapter}' has no readable base_model_name_or_path in its "
            f"adapter_config.json ({type(exc).__name__}); set it to the base model's local "
            f"directory."
        ) from exc
    for cand in (Path(base).expanduser(), adapter / base):
        if (cand / "config.json").is_file():
            return cand
    if _HUB_ID.fullmatch(base):  # a Hub id, as PEFT writes it: the local cache's copy
        try:
            snap = _cached_hub_model(base)
        except InputError:
            snap = None
        if snap is not None and snap.is_dir():
            return snap
    raise InputError(
        f"The adapter '{adapter}' is for the base model '{base}', which is not a local model "
        f"directory nor in the local Hugging Face cache (attrlens downloads nothing): fetch "
        f"it (`hf download {base}`), or set base_model_name_or_path in its "
        f"adapter_config.json to the base model's local directory."
    )


def _merge_adapter(mdl: Any, adapter: Path) -> Any:
    """``mdl`` with the PEFT adapter in ``adapter`` merged into its weights (LoRA and the other
    adapters that change weights; the prompt-learning ones, which add virtual tokens, are
    refused)."""
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise CapabilityError(
            f"'{adapter}' is a PEFT adapter; loading it needs the 'peft' package: "
            f"pip install 'attrlens[peft]'"
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = PeftModel.from_pretrained(mdl, str(adapter))
    except Exception as exc:
        raise BackendError(
            f"Could not load the adapter '{adapter}' onto its base model: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    cfg = wrapped.peft_config[wrapped.active_adapter]
    if getattr(cfg, "is_prompt_learning", False) or not hasattr(wrapped, "merge_and_unload"):
        raise _prompt_learning_refused(f"The adapter '{adapter}'", cfg)
    return wrapped.merge_and_unload()


def _prompt_learning_refused(what: str, cfg: Any) -> CapabilityError:
    """The refusal of a PEFT prompt-learning adapter (prompt tuning, prefix tuning, ...)."""
    kind = str(getattr(cfg, "peft_type", "PEFT")).split(".")[-1]
    return CapabilityError(
        f"{what} is a {kind} adapter, which adds virtual tokens to every prompt; attrlens "
        f"explains adapters that change weights (LoRA and the like), merged into the model "
        f"or not."
    )


@contextlib.contextmanager
def _conversion_bar(show: bool) -> Iterator[None]:
    """transformers' GGUF conversion draws its tqdm bar whatever its own progress-bar
    switch says; ``show=False`` turns that bar off for the duration."""
    mod = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if mod is None:
        with contextlib.suppress(ImportError):
            import transformers.modeling_gguf_pytorch_utils as mod
    bar = getattr(mod, "tqdm", None)
    if show or bar is None:
        yield
        return
    mod.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        mod.tqdm = bar


def _load(file: Path, *, model_id: str, device: str, dtype: str | None, cache: bool,
          trust_remote_code: bool = False, progress: bool = True) -> HFModel:
    """Load ``file`` on ``device`` in ``dtype`` (None: measured on the CPU, see
    :func:`cpu_auto_dtype`)."""
    import torch
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    if file.is_file():
        if file.suffix.lower() != ".gguf":
            raise InputError(
                f"The model file '{file}' is not a .gguf file. Give a .gguf file or a "
                f"transformers model directory (with config.json)."
            )
        sha = file_sha256(file)
        copy_dir = gguf_copy_dir(sha)
        tok = mdl = None
        if cache and (copy_dir / "config.json").is_file():
            kwargs: dict[str, Any] = {}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tok = AutoTokenizer.from_pretrained(str(copy_dir))
                    mdl = _from_pretrained(copy_dir, dtype=dtype, device=device if dtype else "cpu")
            except Exception as exc:  # noqa: BLE001 - whatever the reader raises (a
                # truncated safetensors file: SafetensorError), the copy is only attrlens'
                # cache: convert the GGUF again and replace it
                log.warning("the cached copy %s did not load (%s); converting the GGUF again",
                            copy_dir, type(exc).__name__)
                shutil.rmtree(copy_dir, ignore_errors=True)
        if mdl is None:  # de-quantize in float32 (and keep that copy), convert afterwards
            kwargs = {"gguf_file": file.name}
            try:
                with warnings.catch_warnings(), _conversion_bar(progress):
                    warnings.simplefilter("ignore")
                    tok = AutoTokenizer.from_pretrained(str(file.parent), **kwargs)
                    mdl = _from_pretrained(file.parent, dtype=None, device="cpu", **kwargs)
            except Exception as exc:
                raise BackendError(
                    f"Could not load the GGUF model '{file}': {type(exc).__name__}: "
                    f"{_first_line(exc)}. Is it a GGUF of a "
                    f"transformers-supported architecture?"
                ) from exc
        if _follow_gguf_special_tokens(tok, file) and "gguf_file" not in kwargs:
            with contextlib.suppress(OSError):  # heal a copy written before this check
                tok.save_pretrained(copy_dir)
        if cache and "gguf_file" in kwargs:
            try:
                tmp = copy_dir.with_name(copy_dir.name + f".tmp{os.getpid()}")
                # the weights are already de-quantized; drop the loader's GGUF marker so
                # that transformers writes them as a plain checkpoint
                mdl.hf_quantizer = None
                if hasattr(mdl.config, "quantization_config"):
                    del mdl.config.quantization_config
                mdl.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                # what `attrlens cache info` names the copy by
                (tmp / COPY_SOURCE_FILE).write_text(json.dumps(
                    {"gguf": str(file.resolve()), "sha256": sha}), encoding="utf-8")
                tmp.rename(copy_dir)
            except OSError as exc:  # a read-only cache (or a concurrent writer) costs speed
                log.warning("could not cache the de-quantized model: %s", exc)
                shutil.rmtree(tmp, ignore_errors=True)
    elif file.is_dir():
        adapter = None
        if not (file / "config.json").is_file() and (file / "adapter_config.json").is_file():
            adapter, file = file, _adapter_base(file)
        if not (file / "config.json").is_file():
            raise InputError(
                f"The directory '{file}' is not a transformers model: it has no config.json."
            )
        sha = _dir_sha256(file)
        trust = {"trust_remote_code": bool(trust_remote_code)}  # (False: no prompt)
        tok = _dir_tokenizer(file, trust)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mdl = _from_pretrained(file, dtype=dtype, device=device, **trust)
        except Exception as exc:
            if not trust_remote_code and "trust_remote_code" in str(exc):
                raise _remote_code_refused(file) from exc
            raise BackendError(
                f"Could not load the model directory '{file}': {type(exc).__name__}: "
                f"{_first_line(exc)}"
            ) from exc
        if adapter is not None:
            mdl = _merge_adapter(mdl, adapter)
            sha = hashlib.sha256((sha + _dir_sha256(adapter)).encode()).hexdigest()
            if (adapter / "tokenizer_config.json").is_file():  # saved beside the adapter
                tok = AutoTokenizer.from_pretrained(str(adapter), **trust)
    else:
        raise InputError(f"The model path '{file}' is neither a file nor a directory.")
    if dtype is None:  # CPU, dtype auto: the model is in float32 here
        dtype = cpu_auto_dtype(mdl, model_id=model_id)
    target = getattr(torch, dtype)
    p0 = next(mdl.parameters())
    if p0.dtype != target or p0.device != torch.device(device):
        mdl = _cast_like_from_pretrained(mdl, torch.device(device), target)
    return HFModel(mdl.eval(), tok, info=ModelInfo(model_id, sha),
                   load_s=time.perf_counter() - t0)


def _remote_code_refused(file: Path) -> InputError:
    """The refusal of a model directory that ships code of its own, without the flag."""
    return InputError(
        f"The model directory '{file}' ships its own modeling or tokenizer code (auto_map in "
        f"its config.json or tokenizer_config.json), which attrlens runs only when allowed: "
        f"read it, then pass --trust-remote-code (CLI) or "
        f"attrlens.load_model(path, trust_remote_code=True)."
    )


#: the files a transformers tokenizer is read from (one of them at least)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                    "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.tiktoken")


def _dir_tokenizer(file: Path, trust: dict[str, bool]) -> Any:
    """The tokenizer saved in the model directory ``file``, or a one-line InputError naming
    what is missing or unreadable (loading it is cheap: before the weights)."""
    from transformers import AutoTokenizer

    fix = (f"save the model's tokenizer into it "
           f"(AutoTokenizer.from_pretrained(<its source>).save_pretrained('{file}'))")
    config = file / "config.json"
    if config.is_file():  # (the tokenizer reads it too: its error would blame the tokenizer)
        try:
            json.loads(config.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(
                f"The model directory's config.json ('{config}') is not valid JSON "
                f"({_first_line(exc)}): repair it, or save the model again "
                f"(model.save_pretrained('{file}'))."
            ) from None
    if not any((file / n).is_file() for n in _TOKENIZER_FILES):
        raise InputError(
            f"The model directory '{file}' has no tokenizer (none of "
            f"{', '.join(_TOKENIZER_FILES[:4])}, ...): {fix}."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(str(file), **trust)
    except Exception as exc:
        if not trust.get("trust_remote_code") and "trust_remote_code" in str(exc):
            raise _remote_code_refused(file) from exc
        raise InputError(
            f"The tokenizer in the model directory '{file}' does not load "
            f"({type(exc).__name__}: {_first_line(exc)}): {fix}."
        ) from exc


def wrap_model(model: Any, tokenizer: Any = None, *, model_id: str | None = None) -> HFModel:
    """An attrlens backend around a transformers causal LM object, on whatever device(s) it
    is: one CPU/CUDA/MPS device, or several through ``device_map`` (inputs then go to the
    input embedding's device).

    model:     an ``AutoModelForCausalLM`` (or an HFModel, returned as is; a
               ``torch.compile``-d model is unwrapped: attrlens runs the module itself, as
               it does a ``DataParallel`` / ``DistributedDataParallel`` one's; a
               text-generation ``pipeline`` gives its model and tokenizer)
    tokenizer: its fast tokenizer (``AutoTokenizer.from_pretrained(...)``)
    model_id:  the id recorded in results (default: the config's ``_name_or_path``, with
               ``+lora:<adapter>`` for a PEFT model); the
               weights' sha256 is not computed for an object (recorded as None).
    """
    if isinstance(model, HFModel):
        if tokenizer is not None and tokenizer is not model.tokenizer:
            raise ParameterError(
                "A tokenizer was given beside an attrlens model, which has its own; drop "
                "tokenizer=... (or pass the transformers model object instead)."
            )
        return model
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise BackendError("attrlens needs torch: pip install torch") from exc
    # pipeline("text-generation", ...): its model and tokenizer (a pipeline object means its
    # module is loaded; importing it here would cost ~2 s)
    pipes = sys.modules.get("transformers.pipelines.base")
    if pipes is not None and isinstance(model, pipes.Pipeline):
        if tokenizer is None:
            tokenizer = model.tokenizer
        model = model.model
    compiled = getattr(model, "_orig_mod", None)  # torch.compile(model)'s module
    if isinstance(model, torch.nn.Module) and isinstance(compiled, torch.nn.Module):
        # attrlens' forwards call the module's decoder and head (shapes that change from
        # forward to forward, attention functions of its own), never the compiled graph;
        # generating the answer through it cost a compile on the first call (the embedded
        # model: 34 s with a cold compile cache, 6.7 s warm, against 0.9 s;
        # benchmarks/model_objects.py). The weights are the same.
        model = compiled
    if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        model = model.module  # (replicas for training; one forward at a time needs none)
    is_lm = isinstance(model, torch.nn.Module) and all(
        callable(getattr(model, a, None))
        for a in ("get_decoder", "get_output_embeddings", "get_input_embeddings", "generate")
    )
    if not is_lm:
        raise ParameterError(
            f"The model must be a path, attrlens.load_model(...) or a transformers causal LM "
            f"object (AutoModelForCausalLM.from_pretrained(...)); got {type(model).__name__}."
        )
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ParameterError(
            f"attrlens explains decoder-only causal LMs; {type(model).__name__} is an "
            f"encoder-decoder model (the prompt goes to its encoder, the output to its "
            f"decoder), which it does not support."
        )
    kind = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    if getattr(_text_config(model.config), "num_hidden_layers", None) is None:
        raise CapabilityError(
            f"{type(model).__name__} has no single stack of token-level decoder layers (its "
            f"config names no num_hidden_layers: BLT's byte patches), which attrlens' scoring "
            f"needs."
        )
    if kind.endswith("_assistant"):
        raise CapabilityError(
            f"{type(model).__name__} is a drafting model for speculative decoding: it reads "
            f"the hidden states and keys of its target model, which attrlens does not pass; "
            f"explain the target model instead."
        )
    if _unloaded(model):
        raise ParameterError(
            f"The weights of {type(model).__name__} are on the meta device (a model built "
            f"without them: init_empty_weights, device='meta', from_config under a meta "
            f"device); load them first (from_pretrained, or load_state_dict(..., assign=True))."
        )
    if tokenizer is None:
        raise ParameterError(
            "A transformers model object needs its tokenizer: "
            "attrlens.explain(prompt, model=model, tokenizer=tokenizer)."
        )
    if not callable(tokenizer) or not hasattr(tokenizer, "decode"):
        raise ParameterError(
            f"The tokenizer must be a transformers tokenizer "
            f"(AutoTokenizer.from_pretrained(...)); got {type(tokenizer).__name__}."
        )
    impl = getattr(_text_config(model.config), "_attn_implementation", None)
    if impl == "flex_attention" and _placement(model)[0].type == "cpu":
        raise CapabilityError(
            "The model runs flex_attention on the CPU, whose compiled kernels fail on the "
            "masks and shapes of attrlens' forwards (torch 2.13: index out of bounds, or a "
            "crash); switch it to the same attention through SDPA first: "
            "model.set_attn_implementation('sdpa') (or load it with "
            "attn_implementation='sdpa')."
        )
    peft = getattr(model, "peft_config", None)
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    name = model_id or getattr(model.config, "_name_or_path", None) or type(base).__name__
    if isinstance(peft, dict) and peft:  # not the base model's weights
        active = getattr(model, "active_adapter", None)
        cfg = peft.get(active) if isinstance(active, str) else next(iter(peft.values()))
        if getattr(cfg, "is_prompt_learning", False):
            # (its virtual tokens broke the first forward's shapes: a raw RuntimeError)
            raise _prompt_learning_refused(f"The PEFT model's active adapter '{active}'", cfg)
        if model_id is None:
            kind = str(getattr(cfg, "peft_type", "peft")).split(".")[-1].lower()
            name = f"{name}+{kind}:{active}"
    return HFModel(model, tokenizer, info=ModelInfo(str(name), None))


def _default_dynamic_cache(model: Any) -> bool:
    """Whether transformers' generation gives ``model`` a ``DynamicCache`` (its own list of
    models with caches of their own kinds: RWKV, xLSTM, the first MiniMax, ...); True where
    this transformers has no such list."""
    check = getattr(model, "_supports_default_dynamic_cache", None)
    try:
        return bool(check()) if callable(check) else True
    except Exception:  # noqa: BLE001 - a model class that cannot answer: assume the default
        return True


def _plain_linear(head: Any) -> bool:
    """Whether ``head`` is a torch Linear that computes as one (not a subclass with a
    forward of its own: Dory scales its logits per token, quantized layers unpack)."""
    import torch

    return isinstance(head, torch.nn.Linear) and type(head).forward is torch.nn.Linear.forward


def _flat(x: Any) -> list[Any]:
    """The leaves of nested lists/tuples (GPT-Neo's ``attention_layers``)."""
    if isinstance(x, (list, tuple)):
        return [leaf for item in x for leaf in _flat(item)]
    return [] if x is None else [x]


def _config_cache_layers(config: Any) -> list[Any]:
    """The layers of the cache transformers makes for ``config`` (``DynamicCache(config=)``:
    per layer type); none where it cannot tell (an old transformers, a config it cannot
    read: attention layers)."""
    try:
        from transformers import DynamicCache

        return list(DynamicCache(config=config).layers)
    except Exception:  # noqa: BLE001
        return []


def _indexed_cache_layers(config: Any) -> bool:
    """Whether transformers' cache for ``config`` keeps a sparse-attention indexer's keys
    in some layer (DeepSeek-V3.2-style indexers)."""
    # (DeepSeek-V3.2's name, and MiniMax-M3's)
    return any(hasattr(layer, "update_indexer") or hasattr(layer, "update_index")
               for layer in _config_cache_layers(config))


def _embedding_rows(model: Any) -> int | None:
    """How many token ids the model's input embedding has rows for (None: unknown)."""
    emb = model.get_input_embeddings()
    rows = getattr(emb, "num_embeddings", None)
    if rows is None:
        shape = getattr(getattr(emb, "weight", None), "shape", None)
        rows = shape[0] if shape else None
    return None if rows is None else int(rows)


# the output settings attrlens' forwards rely on: objects with named fields, not tuples;
# no per-layer maps or states unless a call asks for them (see HFModel.evaluating)
_RUN_SETTINGS = {"return_dict": True, "output_attentions": False, "output_hidden_states": False}


def _configs_of(model: Any) -> list[Any]:
    """Every distinct config object of ``model``'s modules (a multimodal model's text
    decoder has a config of its own)."""
    seen: dict[int, Any] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "return_dict"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


def _unloaded(model: Any) -> bool:
    """Whether some weight of ``model`` is on the meta device with no offload hook to bring
    it in (accelerate's offloaded modules keep theirs there between forwards)."""
    if not any(p.is_meta for p in model.parameters()):
        return False
    return not any(_offload_hook(m) is not None for m in model.modules())


def _offload_hook(module: Any) -> Any:
    """accelerate's hook of a module whose weights are offloaded (``device_map`` with
    ``"cpu"`` or ``"disk"`` entries: the parameters are on the meta device and the hook
    brings them in for each forward), or None."""
    hook = getattr(module, "_hf_hook", None)
    return hook if getattr(hook, "offload", False) else None


def _execution_device(module: Any, weight: Any) -> Any:
    """Where ``module`` computes: its offload hook's execution device, else its weight's."""
    import torch

    hook = _offload_hook(module)
    return torch.device(hook.execution_device) if hook is not None else weight.device


@contextlib.contextmanager
def onloaded(module: Any) -> Iterator[None]:
    """The module's own parameters readable on its execution device inside the block, also
    when ``device_map`` offloaded them (accelerate's hook loads them and lets them go
    afterwards); a no-op for every other module."""
    hook = _offload_hook(module)
    if hook is None:
        yield
        return
    hook.pre_forward(module)
    try:
        yield
    finally:
        hook.post_forward(module, None)


def _placement(model: Any) -> tuple[Any, Any, str]:
    """(input device, dtype, device description) of a transformers model: the input
    embedding's device (its execution device when offloaded) and dtype; several devices
    (``device_map``) are listed."""

    emb = model.get_input_embeddings()
    w = getattr(emb, "weight", None)
    if w is None:
        w = next(model.parameters())
    mapped = getattr(model, "hf_device_map", None) or {}
    devs = sorted({_dev_name(d) for d in mapped.values()})
    dev = _execution_device(emb, w)
    desc = ",".join(devs) if len(devs) > 1 else str(dev)
    return dev, w.dtype, desc


def _dev_name(d: Any) -> str:
    if isinstance(d, int):
        return f"cuda:{d}"
    return str(d)


PACKED_SDPA = "attrlens_packed_sdpa"  # the name :meth:`HFModel.packed_attention` registers
# whether this thread/task is inside :meth:`HFModel.packed_attention` (another thread that
# runs the same model meanwhile gets transformers' SDPA, masks included)
_PACKED_HERE: contextvars.ContextVar[bool] = contextvars.ContextVar("attrlens_packed", default=False)
_PACKED_USERS: dict[int, int] = {}  # id(config) -> blocks inside packed_attention
_PACKED_LOCK = threading.Lock()
_GENERATION_LOCK = threading.RLock()  # one generation at a time swaps a generation config


def _gqa_sdpa() -> bool:
    """Whether this torch's SDPA takes ``enable_gqa`` (torch >= 2.5) and this transformers
    has the attention and mask interfaces that :meth:`HFModel.packed_attention` registers
    with."""
    import torch

    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    try:
        from transformers import AttentionInterface  # noqa: F401
        from transformers.masking_utils import AttentionMaskInterface  # noqa: F401
    except ImportError:
        return False
    return (major, minor) >= (2, 5)


_BF16_LOCK = threading.RLock()


@contextlib.contextmanager
def bf16_products() -> Iterator[None]:
    """Within the block, float32 matrix products on the CPU run on its bfloat16 matrix units
    (oneDNN's bf16 math mode for float32, ``torch.backends.mkldnn.matmul.fp32_precision``):
    inputs are rounded to bf16, products summed in float32, the output is float32. For
    inputs that are bf16 numbers already (a bf16 model's hidden states and head weights)
    nothing is rounded: the float32 head's result, ~2x faster on this machine. A no-op on a
    torch without that setting or a CPU without AVX512-BF16 or AMX (emulated bf16 is slower
    there). torch keeps the setting process-wide, so only scoring's no-grad head products of
    bf16 inputs run inside it, one block at a time."""
    import torch

    mat = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    cpu = getattr(torch, "cpu", None)
    fast = any(getattr(cpu, f, lambda: False)()
               for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    if mat is None or not hasattr(mat, "fp32_precision") or not fast:
        yield
        return
    with _BF16_LOCK:
        old = mat.fp32_precision
        mat.fp32_precision = "bf16"
        try:
            yield
        finally:
            mat.fp32_precision = old


_CPU_GQA_FLASH: list[bool] = []


def cpu_gqa_flash() -> bool:
    """Whether this torch's CPU SDPA runs grouped-query attention (``enable_gqa``) in its
    flash kernel, causal and under a mask. Asked of torch's own kernel choice once per
    process: torch 2.6's CPU kernel, for one, sends ``enable_gqa`` to the math path, which
    keeps every (queries x keys) score map, so keys and values are then repeated per query
    head instead."""
    if not _CPU_GQA_FLASH:
        import torch

        q, k = torch.zeros(1, 4, 4, 8), torch.zeros(1, 2, 4, 8)
        try:
            flash = int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)
            ok = all(
                int(torch._fused_sdp_choice(q, k, k, enable_gqa=True, **kw)) == flash
                for kw in ({"is_causal": True}, {"attn_mask": torch.zeros(1, 1, 4, 4)})
            )
        except (AttributeError, RuntimeError, TypeError, ValueError):
            ok = False
        _CPU_GQA_FLASH.append(ok)
    return _CPU_GQA_FLASH[0]


#: one sequence after a cached prefix at least as long, on CPU: attention as two flash calls
#: merged by their log-sum-exp (:func:`_prefix_then_causal`), not one call under a mask
SPLIT_PREFIX_ATTENTION = True


def _prefix_then_causal(query: Any, key: Any, value: Any, k: int, groups: int,
                        scaling: float | None) -> Any:
    """Causal attention aligned at the end, as two mask-free flash calls on the CPU: the
    queries over the k prefix keys (all of them: every query reads the whole prefix), and
    over their own keys (causal, aligned at the start: the kernel skips the blocks above
    the diagonal), merged by the two log-sum-exps (float32). A masked call computes every
    block, the masked half of the own-key square included (one layer at 4,000 tokens:
    1.2-1.6x slower, ``benchmarks/prefix_attention.py``). Grouped-query heads: each key/value
    head's query heads are stacked along the query axis for the prefix call (no key copies;
    exact there, as nothing is causal), and the own keys are repeated per query head.
    (B, H, q, D) -> (B, H, q, D), or None where this torch has no CPU flash op that returns
    its log-sum-exp, or it refuses the inputs."""
    import torch

    flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if flash is None:
        return None
    b, h, q_len, d = query.shape
    kv = key.shape[1]
    try:
        o1, l1 = flash(query.reshape(b, kv, groups * q_len, d), key[:, :, :k], value[:, :, :k],
                       0.0, False, scale=scaling)
        own_k, own_v = key[:, :, k:], value[:, :, k:]
        if groups > 1:
            own_k, own_v = (t.repeat_interleave(groups, 1) for t in (own_k, own_v))
        o2, l2 = flash(query, own_k, own_v, 0.0, True, scale=scaling)
    except (RuntimeError, TypeError):
        return None
    l1, o1 = l1.reshape(b, h, q_len), o1.reshape(b, h, q_len, d)
    m = torch.maximum(l1, l2)
    w1, w2 = (l1 - m).exp_().unsqueeze(-1), (l2 - m).exp_().unsqueeze(-1)
    out = (o1.float() * w1).add_(o2.float() * w2).div_(w1 + w2)
    return out.to(query.dtype)


def _packed_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                 dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> Any:
    """transformers' SDPA attention with two changes for the scoring engine's forwards.

    - No mask means causal *aligned at the end*: with k more keys than queries (a cached
      prefix), query i reads keys 0..k+i. transformers makes no mask for an attention
      function it does not know, and torch's ``is_causal`` aligns at the start, so this is
      done here: one square causal SDPA call over k zero queries + the real ones when
      k < queries (the k² / 2 scores of the zero queries cost less than a mask's masked
      half), else an explicit mask made in this layer. Nothing of the size of
      queries x keys outlives a layer, and the causal kernel skips the blocks above the
      diagonal, which it cannot under a mask. On CPU, k >= queries is two flash calls
      instead of a mask (:func:`_prefix_then_causal`).
    - On CPU under a mask, grouped-query attention goes to SDPA as ``enable_gqa``
      (transformers copies each key/value head per query head there, because CUDA's kernels
      fall back to the math path with a mask and GQA; CPU's flash kernel takes both, and
      saves the copies), where this torch's CPU flash kernel has GQA (:func:`cpu_gqa_flash`;
      without it, the mask-free call gets copied keys and values too).

    Anything else goes to transformers' own SDPA function unchanged."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _PACKED_HERE.get():  # a forward of the model outside the engine (another thread)
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    # our masks (and the causal-at-the-end rule below) carry causality; a model's own
    # is_causal flag (GPT-2 in transformers 4.x passes True) would add start-aligned causality
    kwargs["is_causal"] = False
    groups = getattr(module, "num_key_value_groups", 1)
    special = any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "s_aux"))
    plain = not (dropout or special or kwargs.get("output_attentions"))
    q_len, k = query.shape[2], key.shape[2] - query.shape[2]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    on_cpu = query.device.type == "cpu"
    gqa = groups > 1 and (not on_cpu or cpu_gqa_flash())
    if attention_mask is None and q_len > 1:
        if plain and k < q_len and query.device.type in ("cpu", "cuda"):
            q = query if k == 0 else torch.cat([query.new_zeros(*query.shape[:2], k, query.shape[3]), query], 2)
            if groups > 1 and not gqa:  # (this torch's CPU flash kernel has no GQA)
                key, value = (t.repeat_interleave(groups, 1) for t in (key, value))
            out = sdpa(q, key, value, is_causal=True, scale=scaling, enable_gqa=gqa)
            return out[:, :, k:].transpose(1, 2).contiguous(), None
        if plain and on_cpu and SPLIT_PREFIX_ATTENTION and not query.requires_grad:
            out = _prefix_then_causal(query, key, value, k, groups, scaling)
            if out is not None:
                return out.transpose(1, 2).contiguous(), None
        attention_mask = torch.ones(q_len, q_len + k, dtype=torch.bool,
                                    device=query.device).tril(k)[None, None]
    if attention_mask is None or not gqa or not on_cpu or not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    out = sdpa(query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


class _VocabOnly:
    """A logits processor for ``generate``: scores past the first ``n`` (head rows that are
    no token) set to -inf."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores[..., self.n:] = float("-inf")
        return scores


def _recurrent_cache_layers(config: Any) -> bool:
    """Whether transformers' cache for ``config`` keeps a recurrent state in some layer
    (transformers >= 5.25); False where it cannot tell."""
    try:
        from transformers.cache_utils import LinearAttentionCacheLayerMixin
    except ImportError:
        return False
    return any(isinstance(layer, LinearAttentionCacheLayerMixin)
               for layer in _config_cache_layers(config))


#: ``layer_types`` entries of layers that keep a state instead of keys (transformers'
#: configs also name attention and MLP variants there: "indexed_attention", "sparse", ...)
RECURRENT_LAYER_TYPES = frozenset({"conv", "mamba", "mamba2", "linear_attention",
                                   "recurrent", "ssm"})


def _recurrent_layer_types(config: Any) -> bool:
    """Whether the config's ``layer_types`` names a recurrent layer."""
    kinds = getattr(config, "layer_types", None)
    return isinstance(kinds, (list, tuple)) and any(
        isinstance(k, str) and k in RECURRENT_LAYER_TYPES for k in kinds)


def _packed_mask(*args: Any, **kwargs: Any) -> Any:
    """Mask creation under :data:`PACKED_SDPA`: none in the engine's forwards (they pass
    their own masks, or none for one plain sequence); transformers' SDPA mask for any other
    forward of the model meanwhile (another thread)."""
    if _PACKED_HERE.get():
        return None
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)


class HFModel:
    """A transformers causal LM with its tokenizer, as an attrlens backend.

    ``model`` is any ``AutoModelForCausalLM``; ``tokenizer`` must be a fast tokenizer (char
    offsets are needed to map features to tokens).
    """

    capabilities = frozenset(
        {"tokenize", "render_chat", "generate", "score", "embeddings", "rotary", "gradients"}
    )

    def __init__(self, model: Any, tokenizer: Any, *, info: ModelInfo, load_s: float = 0.0):

        self.model = model  # its train/eval mode is the user's: see evaluating()
        self.tokenizer = tokenizer
        self.load_s = load_s
        if not getattr(tokenizer, "is_fast", False):
            raise BackendError(
                "attrlens needs a fast (Rust) tokenizer for char offsets; this model's "
                "tokenizer is a slow one. Save the model with a tokenizer.json."
            )
        rows = _embedding_rows(model)
        if rows is not None and len(tokenizer) > rows:
            raise ParameterError(
                f"The tokenizer has {len(tokenizer)} tokens and the model embeds {rows}: it "
                f"is not this model's tokenizer, or tokens were added to it without "
                f"model.resize_token_embeddings(len(tokenizer)); pass the model's own "
                f"tokenizer (AutoTokenizer.from_pretrained of the model's directory)."
            )
        import transformers

        major = int(transformers.__version__.split(".")[0])
        if major < 5 and getattr(_text_config(model.config), "num_kv_shared_layers", 0):
            raise CapabilityError(
                f"{type(model).__name__} shares keys and values between layers, which "
                f"transformers 4.x computes differently with and without a cache (log-"
                f"probabilities 1.4 nats apart on a tiny Gemma-3n), so its scores would not be "
                f"exact; use transformers >= 5."
            )
        if type(model).__name__.startswith("RecurrentGemma") and major < 5:
            raise CapabilityError(
                "RecurrentGemma on transformers 4.x keeps its recurrent state in its modules "
                "from one call to the next (reset only by a cached prefill), so perturbed "
                "prompts would read each other's state; use transformers >= 5."
            )
        self._cache_kwarg: str | None = None
        # scoring's float32 head of a bf16 model on the CPU's bf16 matrix units (exact:
        # :func:`bf16_products`); False: plain float32 products
        self.bf16_head_products = True
        self.device, self.dtype, where = _placement(model)
        self.info = dataclasses.replace(
            info, device=where, dtype=str(self.dtype).replace("torch.", "")
        )
        if self.template_reads_date and self.info.template_date is None:
            day = today()
            if self._dated_template(day) is None:
                log.warning("The chat template of %s reads the clock in a form attrlens "
                            "cannot fix to one date; its prompts follow the clock.", info.id)
            else:
                self.info = dataclasses.replace(self.info, template_date=day)

    # ---- description -------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def text_config(self) -> Any:
        """The config of the language model (the text part of a multimodal config)."""
        return _text_config(self.model.config)

    @property
    def sliding_window(self) -> tuple[int | None, bool]:
        """(window, whether only some layers slide) of the model's attention; (None, False)
        when no layer slides (read from the language model's config: a multimodal
        model's top config has none)."""
        cfg = self.text_config
        window = getattr(cfg, "sliding_window", None)
        if not window or getattr(cfg, "use_sliding_window", True) is False:
            return None, False
        kinds = set(getattr(cfg, "layer_types", None) or ["sliding_attention"])
        if "sliding_attention" not in kinds:
            return None, False
        return int(window), len(kinds) > 1

    @property
    def attention_chunk(self) -> int | None:
        """The chunk of the model's chunked-attention layers (Llama-4: a query reads only
        the keys of its own chunk of ``attention_chunk_size`` positions), or None. The
        scoring engine's packed masks and the packed attention do not chunk: sequences
        longer than one chunk run with transformers' own masks."""
        cfg = self.text_config
        chunk = getattr(cfg, "attention_chunk_size", None)
        kinds = getattr(cfg, "layer_types", None)
        if not chunk or (kinds is not None and "chunked_attention" not in kinds):
            return None
        return int(chunk)

    def shares_prefix(self, n_tokens: int) -> bool:
        """Whether attrlens' packed masks, packed attention and shared key/value prefix hold
        for sequences of ``n_tokens``: not past one chunk of chunked attention (Llama-4), and
        never for a model in :attr:`own_masks_only`. Where they do not, the engine runs plain
        rows, GiLOT's beams keep caches of transformers' own, and the gradient methods
        transformers' masks."""
        return self.within_attention_chunk(n_tokens) and not self.own_masks_only

    @property
    def own_masks_only(self) -> bool:
        """A model whose attention holds only under transformers' own masks and caches:
        a sparse-attention indexer (DeepSeek-V3.2, GLM-MoE-DSA, HY-V4: it reads a 4-D mask
        and keeps its own keys in the cache; packed rows broke its top-k ties differently),
        GPT-Neo's local layers (their window is cut by tensor index, not by position: 1.4
        nats off behind a shared prefix), layers run in several loops (Dory: a cache layer
        per loop) or cross-attention layers (Mllama: skipped without an image, they read a
        shared prefix's unwritten layer as cached image states and crashed)."""
        got = self.__dict__.get("_own_masks_only")
        if got is None:
            cfg = self.text_config
            local = [k for k in _flat(getattr(cfg, "attention_layers", None)) if k == "local"]
            got = self.__dict__["_own_masks_only"] = bool(
                _indexed_cache_layers(cfg) or getattr(cfg, "index_topk", None)
                or getattr(cfg, "index_topk_blocks", None)
                or local or (getattr(cfg, "n_recurrent_loops", 1) or 1) > 1
                or getattr(cfg, "cross_attention_layers", None))
        return got

    @property
    def unpadded_rows(self) -> bool:
        """Whether plain rows must run one per forward, unpadded: layers that compress keys
        in windows of tensor columns (DeepSeek-V4's compressed sparse attention) read a
        padded row's pads, behind gapped positions (``delete``: 0.1-0.5 nats)."""
        kinds = getattr(self.text_config, "layer_types", None) or []
        return any(isinstance(k, str) and "compressed" in k for k in kinds)

    def within_attention_chunk(self, n_tokens: int) -> bool:
        """Whether a sequence of ``n_tokens`` lies within one attention chunk (always, for a
        model without chunked attention): else attrlens' packed masks, packed attention and
        shared prefix do not hold, and transformers' own masks run."""
        chunk = self.attention_chunk
        return chunk is None or n_tokens <= chunk

    @property
    def context_length(self) -> int:
        cfg = self.text_config
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def template_reads_date(self) -> bool:
        """Whether the chat template asks for the current date (transformers' template
        function ``strftime_now``), e.g. Llama 3.2's "Today Date: ..." line."""
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):  # several named templates (transformers 4.x)
            template = " ".join(map(str, template.values()))
        return bool(template) and "strftime_now" in str(template)

    def _dated_template(self, date: str, name: Any = None) -> str | None:
        """The template ``apply_chat_template`` renders for ``chat_template=name``, fixed to
        ``date`` (:func:`_dated_template`); None where that cannot be done."""
        try:
            template = str(self.tokenizer.get_chat_template(name))
        except ValueError:  # several named templates and none is the default
            return None
        return _dated_template(template, date)

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

    @property
    def empty_context_id(self) -> int | None:
        """The one token the ``delete`` masker feeds when every prompt token is masked (an
        output needs a token to be predicted from): BOS if the vocabulary has one, else EOS
        (the empty-context convention of lm-evaluation-harness); None without either."""
        tok = self.tokenizer
        if tok.bos_token_id is not None:
            return int(tok.bos_token_id)
        eos = self.eos_token_ids
        return eos[0] if eos else None

    def __repr__(self) -> str:
        return f"HFModel(id={self.info.id!r}, device={self.info.device}, dtype={self.info.dtype})"

    # ---- text --------------------------------------------------------------------------
    def with_chat_template(self, **kwargs: Any) -> HFModel:
        """This model (the same weights and tokenizer, not a copy of them) with its chat
        template rendered with ``kwargs``, e.g. ``enable_thinking=False`` for Qwen3. They are
        recorded with every result (``model.chat_template_kwargs``) and in evaluation
        records' keys. No arguments: the template's defaults."""
        taken = sorted(set(kwargs) & {"conversation", "tokenize", "add_generation_prompt",
                                      "strftime_now"})
        if taken:
            raise ParameterError(
                f"The chat template argument(s) {', '.join(taken)} are set by attrlens itself "
                f"(it renders text, with the generation prompt, on the model's template "
                f"date); leave them out."
            )
        for k, v in kwargs.items():
            try:
                json.dumps(v)
            except (TypeError, ValueError):
                raise ParameterError(
                    f"The chat template argument {k}={v!r} is not a JSON value (a string, "
                    f"number, bool, null, list or object); results must be able to record it."
                ) from None
        other = copy.copy(self)
        other.info = dataclasses.replace(self.info, chat_template_kwargs=dict(kwargs) or None)
        return other

    def with_template_date(self, date: str) -> HFModel:
        """This model (the same weights and tokenizer, not a copy of them) with its chat
        template rendered on ``date`` (``YYYY-MM-DD``) instead of the date it was loaded on:
        to reproduce a result of another day (its ``model.template_date``). Only for a
        template that reads the date (:attr:`template_reads_date`)."""
        iso = parse_template_date(date)
        if not self.template_reads_date:
            raise ParameterError(
                f"The chat template of {self.info.id} does not read the date, so a template "
                f"date ({iso}) would change nothing; leave it out."
            )
        if self._dated_template(iso) is None:
            raise CapabilityError(
                f"The chat template of {self.info.id} reads the clock in a form attrlens "
                f"cannot fix to one date (strftime_now with a format that is not a literal "
                f"string); its prompts follow the clock."
            )
        other = copy.copy(self)
        other.info = dataclasses.replace(self.info, template_date=iso)
        return other

    def render_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Render chat messages with the model's template (text, not ids), with the keyword
        arguments of :meth:`with_chat_template`; a template that reads the date gets the
        model's ``template_date`` (midnight of that day), not the clock's."""
        kwargs = dict(self.info.chat_template_kwargs or {})
        if self.info.template_date and self.has_chat_template:
            dated = self._dated_template(self.info.template_date, kwargs.get("chat_template"))
            if dated is not None:
                kwargs["chat_template"] = dated
        if not self.has_chat_template:
            raise InputError(
                "This model's tokenizer has no chat template; pass a plain text prompt "
                "(or use --raw) instead of chat messages."
            )
        from jinja2.exceptions import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                **kwargs,
            )
        except TemplateError as exc:  # the template's own raise_exception(...)
            roles = "/".join(m.get("role", "?") for m in messages)
            raise InputError(
                f"This model's chat template refused the messages ({roles}): {exc}. Give "
                f"messages in the form its template accepts (e.g. no system message, or "
                f"alternating user/assistant), or a plain prompt with --raw."
            ) from exc

    def tokenize(self, text: str, *, add_special_tokens: bool = False,
                 split_special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and (start, end) char offsets of each token in ``text``.
        ``add_special_tokens``: the tokens the tokenizer puts before a text (BOS), never those
        it puts after (a post-processor that appends EOS, as some fine-tunes' tokenizers do,
        would end every prompt there and put the output after an end of text).
        ``split_special_tokens``: control-token strings in the text become ordinary tokens."""
        kw = {"split_special_tokens": True} if split_special_tokens else {}
        enc = self.tokenizer(text, add_special_tokens=add_special_tokens,
                             return_offsets_mapping=True, **kw)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        alone = (self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                                **kw) if add_special_tokens else None)
        plain = list(alone["input_ids"]) if alone is not None else []
        if plain:  # (where the text alone gives no tokens, what is before or after is moot)
            n = len(plain)
            spans = [tuple(o) for o in alone["offset_mapping"]]
            at = [k for k in range(len(ids) - n + 1) if ids[k:k + n] == plain]
            # the text's own tokens, at its offsets: a text that is the BOS string ("<s>")
            # matched the BOS the tokenizer adds at 0, which cut the text's token off
            k = next((k for k in at if offsets[k:k + n] == spans), at[0] if at else None)
            cut = len(ids) if k is None else k + n
            ids, offsets = ids[:cut], offsets[:cut]
        return ids, offsets

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        """The text of ``ids``, as the tokens spell it (no clean-up of spaces before
        punctuation, which some tokenizers' configs ask for and which changes the text)."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    # ---- generation ----------------------------------------------------------------------
    def generate(self, input_ids: list[int], *, max_new_tokens: int = 64) -> list[int]:
        """Greedy continuation of ``input_ids`` (stops at EOS, which is not returned, or at
        the end of the model's context): at each step the most likely token of the
        distribution that attrlens scores. The
        model's own generation config (``generation_config.json``: repetition penalty, banned
        or forced tokens, beams, a minimum length, ...) is set aside for the call: it is not
        recorded in results, and it would make the answer depend on a file beside the
        weights."""
        import torch

        from .base import out_of_memory_attempt

        # (past the context, position tables end: IndexError inside the model; the
        # answer stops where the context does)
        max_new_tokens = min(max_new_tokens, self.context_length - len(input_ids))
        if max_new_tokens <= 0:
            raise InputError(
                f"The prompt has {len(input_ids)} tokens, which fill the model's context of "
                f"{self.context_length}; nothing can be generated after it: shorten it."
            )
        ids = torch.tensor([input_ids], device=self.device)
        eos = self.eos_token_ids
        extra: dict[str, Any] = {}
        emb = getattr(self.input_embeddings, "num_embeddings", None)
        rows = [n for n in (self.vocab_rows, emb) if n is not None]
        if self.vocab_rows is not None and rows:
            # a head wider than the vocabulary or the embedding table (Inkling's padding
            # rows): its argmax could be a row that is no token (IndexError in the embedding
            # at the next step)
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList([_VocabOnly(min(rows))])

        def greedy() -> Any:
            with self.inference(), warnings.catch_warnings(), self._plain_generation():
                warnings.simplefilter("ignore")
                return self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    # (one sequence: the pad id is never used; a vocabulary without pad
                    # and EOS tokens gets 0)
                    pad_token_id=next((t for t in (self.tokenizer.pad_token_id, *eos)
                                       if t is not None), 0),
                    eos_token_id=eos or None,
                    **extra,
                )

        out, err = out_of_memory_attempt(greedy)
        if err is not None:  # one sequence: nothing to halve
            raise CapabilityError(
                f"Generating the model's answer to a {len(input_ids)}-token prompt does not "
                f"fit in the device's memory ({err}); give the output to explain "
                f"(--output-text), or use a shorter prompt, a smaller model or dtype, or "
                f"another device."
            )
        new = out[0, ids.shape[1]:].tolist()
        for i, t in enumerate(new):
            if t in eos:
                return new[:i]
        return new

    @contextlib.contextmanager
    def _plain_generation(self) -> Iterator[None]:
        """The model's generation config replaced, inside the block, by transformers'
        defaults with only its token ids and cache settings kept (nothing that changes which
        token is chosen); restored after."""
        from transformers import GenerationConfig

        own = getattr(self.model, "generation_config", None)
        if own is None:
            yield
            return
        keep = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                "cache_implementation", "cache_config", "use_cache")
        plain = GenerationConfig(**{k: getattr(own, k) for k in keep
                                    if getattr(own, k, None) is not None})
        with _GENERATION_LOCK:
            self.model.generation_config = plain
            try:
                yield
            finally:
                self.model.generation_config = own

    # ---- model parts -----------------------------------------------------------------
    @property
    def decoder(self) -> Any:
        """The transformer body (returns hidden states; final norm included): the model's
        ``get_decoder()``, or its base model where that returns the whole LM (GPT-2, Falcon,
        GPT-J, ... in transformers 4.x), or its ``model`` / ``transformer`` child where both
        do (Llama-4's text model, whose base-model name is not its child's)."""
        import torch

        lm = self.model
        dec = lm.get_decoder()
        layer = (torch.nn.Linear, torch.nn.Embedding)  # a projection, not a decoder
        if dec is not None and dec is not lm and not isinstance(dec, layer):
            return dec  # (the common case, on every forward)
        # (ModernBERT-decoder's get_decoder() gives its vocabulary projection, named decoder)
        for dec in (lm.base_model, getattr(lm, "model", None), getattr(lm, "transformer", None)):
            if dec is not None and dec is not lm and not isinstance(dec, layer):
                return dec
        return lm.base_model

    def layers(self) -> Any:
        """The decoder's blocks: ``layers`` (Llama-style, GPT-NeoX), ``h`` (GPT-2, Falcon,
        Bloom, GPT-J) or ``blocks`` (MPT)."""
        import torch

        for name in ("layers", "h", "blocks"):
            mods = getattr(self.decoder, name, None)
            if isinstance(mods, torch.nn.ModuleList) and len(mods):
                return mods
        raise CapabilityError(
            f"The model {self.info.id} has no list of decoder blocks attrlens knows "
            f"(decoder.layers, .h or .blocks); this method needs one."
        )

    def attention_module(self, layer: Any) -> Any:
        """A block's self-attention module, for the methods that read attention weights
        (their forward hooks take ``(output, weights)``): models whose attention runs
        through transformers' attention interface only."""
        import torch

        if self.hooks_attention:
            for name in ("self_attn", "attn", "attention", "self_attention"):
                mod = getattr(layer, name, None)
                if isinstance(mod, torch.nn.Module):
                    return mod
        raise CapabilityError(
            f"The model {self.info.id} ({type(self.model).__name__}) does not run its "
            f"attention through transformers' attention interface, so attrlens cannot read "
            f"its attention weights; use a method without attention (loo, ig, ...)."
        )

    @property
    def attention_kind(self) -> str:
        """The decoder's attention implementation ("sdpa", "eager", ...); "sdpa" also inside
        :meth:`packed_attention`, which is SDPA."""
        kind = self._attn_implementation or "sdpa"
        return "sdpa" if kind == PACKED_SDPA else kind

    @property
    def _attn_implementation(self) -> str | None:
        return getattr(getattr(self.decoder, "config", None), "_attn_implementation", None)

    @property
    def packs_attention(self) -> bool:
        """Whether :meth:`packed_attention` takes effect: SDPA layers of a model whose
        attention goes through transformers' attention interface (Falcon, Bloom, MPT, ...
        have their own), torch >= 2.5 (``enable_gqa``; on the CPU it is used where the
        flash kernel takes it, :func:`cpu_gqa_flash`) and transformers' attention and mask
        interfaces; and checked once per model: a forward inside it equals the model's own
        (Doge adds a mask of its own making to the one it is given, and without one it
        made a non-causal one: 0.2 nats and more off)."""
        if not (self._attn_implementation in ("sdpa", PACKED_SDPA)
                and self.on_attention_interface and _gqa_sdpa()):
            return False
        return self._checked("_packs_attention", self._packed_attention_matches,
                             "its attention under attrlens' packed SDPA differs from its "
                             "own; the engine passes it masks instead")

    def _checked(self, key: str, probe: Any, note: str) -> bool:
        """The result of a per-model check, run once (``probe()``) and kept; a failed one
        is logged with ``note``."""
        got = self.__dict__.get(key)
        if got is None:
            got = self.__dict__[key] = bool(probe())
            if not got:
                log.info("%s: %s", self.info.id, note)
        return got

    def _packed_attention_matches(self) -> bool:
        """Whether a plain forward of a few tokens inside the packed attention (no mask:
        causal) equals the model's own, to float rounding."""
        import torch

        x = self._probe_ids()
        with torch.no_grad():
            want = self.decoder(input_ids=x, **self.no_cache).last_hidden_state[0].float()
            try:
                with self._packed_block():
                    got = self.decoder(input_ids=x, **self.no_cache).last_hidden_state[0]
            except Exception:  # noqa: BLE001 - e.g. a sparse-attention indexer that reads
                return False    # the 4-D mask the packed attention does not make
            got = got.float()
        # (only where no sliding window or attention chunk cuts the causal mask: the packed
        # attention takes those from the engine's masks)
        k = min([x.shape[1]] + [v for v in (self.sliding_window[0], self.attention_chunk) if v])
        tol = 1e-3 * (1.0 + float(want.abs().max()))
        return (bool(torch.isfinite(got).all())
                and float((got[:k] - want[:k]).abs().max()) <= tol)

    @property
    def hooks_attention(self) -> bool:
        """Whether attention methods read the weights through forward hooks on the
        attention modules (:meth:`attention_module`: one layer at a time, the models on
        transformers' attention interface), else from the decoder's ``output_attentions``
        (models with attention code of their own: Falcon, Bloom, MPT, remote code)."""
        return self.on_attention_interface

    @property
    def on_attention_interface(self) -> bool:
        """Whether the model's attention layers call transformers' attention interface
        (``ALL_ATTENTION_FUNCTIONS``) and return ``(output, weights)``."""
        return bool(getattr(type(self.model), "_supports_attention_backend", False))

    @contextlib.contextmanager
    def packed_attention(self) -> Iterator[None]:
        """Within this block the decoder's SDPA layers run :func:`_packed_sdpa` (without a
        mask: causal aligned at the end of a cached prefix, no mask made; under a mask:
        grouped-query attention without copying keys and values per query head); the model's
        own attention implementation is restored after it. A no-op unless
        :attr:`packs_attention`. Only for forwards of the scoring engine: sliding-window
        layers get their window from its masks, not here."""
        if not self.packs_attention:
            yield
            return
        with self._packed_block():
            yield

    @contextlib.contextmanager
    def _packed_block(self) -> Iterator[None]:
        """The body of :meth:`packed_attention`, unchecked."""
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        cfg = self.decoder.config
        with _PACKED_LOCK:  # the last block to leave restores sdpa (blocks in threads)
            AttentionInterface.register(PACKED_SDPA, _packed_sdpa)
            AttentionMaskInterface.register(PACKED_SDPA, _packed_mask)
            _PACKED_USERS[id(cfg)] = _PACKED_USERS.get(id(cfg), 0) + 1
            cfg._attn_implementation = PACKED_SDPA
        token = _PACKED_HERE.set(True)
        try:
            yield
        finally:
            _PACKED_HERE.reset(token)
            with _PACKED_LOCK:
                _PACKED_USERS[id(cfg)] -= 1
                if not _PACKED_USERS[id(cfg)]:
                    del _PACKED_USERS[id(cfg)]
                    cfg._attn_implementation = "sdpa"

    @property
    def cache_kwarg(self) -> str:
        """The decoder's key/value-cache keyword: ``cache`` in the transformers versions that
        renamed it (passing ``past_key_values`` there is deprecated), else ``past_key_values``.
        """
        if self._cache_kwarg is None:
            params = self._decoder_parameters()
            self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        return self._cache_kwarg

    def _decoder_parameters(self) -> Any:
        """The named parameters of the decoder's forward."""
        import inspect

        return inspect.signature(type(self.decoder).forward).parameters

    @property
    def no_cache(self) -> dict[str, Any]:
        """The decoder's keyword arguments for a forward that keeps no key/value cache
        (``use_cache=False``; none for a decoder without the argument)."""
        got = self.__dict__.get("_no_cache")
        if got is None:
            got = self.__dict__["_no_cache"] = _without_cache(self.decoder)
        return got

    @property
    def keeps_cache(self) -> bool:
        """Whether the decoder takes a key/value cache (a ``cache`` or ``past_key_values``
        argument) of transformers' kind (``DynamicCache``): what a shared prefix and GiLOT's
        beam search extend. OpenAI GPT takes none, xLSTM and RWKV caches of their own; their
        scoring rows run plain, and the beams are refused."""
        got = self.__dict__.get("_keeps_cache")
        if got is None:  # (read by every scoring run: once per model)
            params = self._decoder_parameters()
            got = self.__dict__["_keeps_cache"] = bool(
                ("cache" in params or "past_key_values" in params)
                and _default_dynamic_cache(self.model))
        return got

    def output_cache(self, output: Any) -> Any:
        """The key/value cache of a decoder output, read without deprecated attributes: by
        its key (``cache`` in the transformers versions that renamed it, also for a model
        whose own code still passes ``past_key_values``, which they store as ``cache``)."""
        for name in ("cache", "past_key_values"):
            if name in output:
                return output[name]
        return None

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """The model in eval mode inside the block (no dropout, no training-only routing
        noise), and each module back in the mode it had after it: a model object the user
        is training stays in training mode after an explanation, and one put back in
        training mode after it was wrapped is explained in eval mode all the same. The
        same for the output settings of its configs (``return_dict=False`` makes
        transformers return tuples; ``output_attentions`` / ``output_hidden_states`` would
        keep every layer's maps and states in each forward): transformers' defaults inside
        the block, the user's after it."""
        training = [m for m in self.model.modules() if m.training]
        if training:
            self.model.eval()
        changed = []
        for cfg in _configs_of(self.model):
            for key, want in _RUN_SETTINGS.items():
                have = getattr(cfg, key, want)
                if have != want:
                    setattr(cfg, key, want)
                    changed.append((cfg, key, have))
        try:
            yield
        finally:
            for m in training:  # each as it was (train(True) would set its children too)
                m.training = True
            for cfg, key, have in reversed(changed):
                setattr(cfg, key, have)

    def inference(self) -> Any:
        """The context of this model's forwards without gradients: ``torch.inference_mode()``
        (1–2.4 ms, 0–4%, less per forward of the embedded model than ``no_grad`` here:
        ``benchmarks/inference_mode.py``),
        or ``torch.no_grad()`` for a model that cannot run under it (optimum-quanto's 4- and
        2-bit weights: "Cannot set version_counter for inference tensor")."""
        import torch

        return torch.inference_mode() if self.inference_mode_ok else torch.no_grad()

    @property
    def inference_mode_ok(self) -> bool:
        """Whether the model runs under ``torch.inference_mode()``: a model of plain
        parameters does; one with tensor-subclass weights (quantized: bitsandbytes, torchao,
        optimum-quanto) is probed once with a forward of a few tokens."""
        return self._checked("_inference_mode_ok", self._probe_inference_mode,
                             "its weights cannot run under torch.inference_mode(); its "
                             "forwards run under torch.no_grad()")

    def _probe_inference_mode(self) -> bool:
        import torch

        if all(type(p) is torch.nn.Parameter and type(p.data) is torch.Tensor
               for p in self.model.parameters()):
            return True
        try:
            with torch.inference_mode():
                self.decoder(input_ids=self._probe_ids(), **self.no_cache)
        except RuntimeError as e:
            if "inference tensor" not in str(e).lower():
                raise
            return False
        return True

    def _probe_ids(self) -> Any:
        """A few fixed token ids on the model's input device (for the one-time probes)."""
        import torch

        ids = self.tokenizer("The quick brown fox jumps over the lazy dog",
                             add_special_tokens=False)["input_ids"][:8]
        n = int(self.input_embeddings.weight.shape[0])
        ids = [i % n for i in ids] + [(7 * k + 3) % n for k in range(8 - len(ids))]
        return torch.as_tensor([ids], device=self.device)

    @property
    def stateful(self) -> bool:
        """Whether some of the model's layers are recurrent (state-space, linear attention
        or short convolutions), not attention over a key cache: transformers'
        ``_is_stateful`` flag (up to 5.24), or a layer whose cache
        (``DynamicCache(config=...)``) is a linear-attention layer, which keeps a state
        instead of keys (5.25 dropped the flag; LFM2's says False in 5.24, where its
        convolution layers already keep such a cache), or a config that names a recurrent
        layer (``layer_types``: LFM2's "conv" in transformers 4.x), or a decoder that takes
        its state outside transformers' caches (RWKV's ``state``) or in a cache of its own
        kind (xLSTM; without a flag in 5.25, GiLOT's beams crashed on both)."""
        got = self.__dict__.get("_stateful")
        if got is None:
            flag = getattr(type(self.model), "_is_stateful", None)
            params = self._decoder_parameters()
            got = self.__dict__["_stateful"] = (
                bool(flag) or _recurrent_cache_layers(self.model.config)
                or _recurrent_layer_types(self.text_config)
                # a recurrent state passed outside transformers' caches (RWKV's ``state``,
                # Mamba's ``cache_params`` in transformers 4.x), or a cache of its own kind
                # (xLSTM's): no flag on 5.25
                or "state" in params or "cache_params" in params
                or not _default_dynamic_cache(self.model))
        return got

    @property
    def packing(self) -> tuple[bool, bool]:
        """(honours ``position_ids``, honours 4-D additive attention masks): what the scoring
        engine's packed rows and shared prefix need. Probed once on a few tokens, by
        difference, so exact in any dtype: gapped positions must change the last hidden
        state (ALiBi models such as Bloom and MPT ignore them), and a 4-D mask that hides
        the last query's neighbour must change that query and no other (Bloom refuses 4-D
        masks). A recurrent (stateful) model, in whole or in part (Mamba, RecurrentGemma,
        Jamba, Qwen3-Next, ...: transformers' ``_is_stateful``) counts as refusing 4-D
        masks: its recurrence runs through every token of a row, whatever a mask says, and
        its state is not a cache of keys that a prefix could share."""
        got = self.__dict__.get("_packing")
        if got is None and self.stateful:
            got = self.__dict__["_packing"] = (self._probe_packing(masks=False)[0], False)
            log.info("%s: a recurrent model; the scoring engine runs each perturbed prompt in "
                     "a row of its own, without a shared prefix", self.info.id)
        if got is None:
            got = self.__dict__["_packing"] = self._probe_packing()
            if not all(got):
                log.info("%s: %s; the scoring engine runs each perturbed prompt in a row of "
                         "its own, without a shared prefix", self.info.id,
                         "ignores position_ids" if not got[0] else "refuses 4-D masks")
        return got

    def _probe_packing(self, *, masks: bool = True) -> tuple[bool, bool]:
        """(position_ids honoured, 4-D masks honoured); ``masks=False``: the first only."""
        import torch

        x = self._probe_ids()
        n = x.shape[1]
        dec = self.decoder
        pos = torch.arange(n, device=x.device)[None]
        gapped = pos.clone()
        gapped[0, n // 2:] += 5
        # (models that ignore position_ids may warn that they do: that is what is probed)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            try:
                a = dec(input_ids=x, position_ids=pos, **self.no_cache).last_hidden_state[0]
                b = dec(input_ids=x, position_ids=gapped, **self.no_cache).last_hidden_state[0]
            except (TypeError, ValueError, RuntimeError):
                return False, False
            positions = not torch.equal(a[-1], b[-1])
            if not masks:
                return positions, False
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            hidden = causal.clone()
            hidden[n - 1, n - 2] = False  # the last query's neighbour (inside any window)
            outs = []
            for keep in (causal, hidden):
                mask = torch.zeros(1, 1, n, n, dtype=a.dtype, device=x.device).masked_fill(
                    ~keep, torch.finfo(a.dtype).min)
                try:
                    outs.append(dec(input_ids=x, position_ids=pos, attention_mask=mask,
                                    **self.no_cache).last_hidden_state[0])
                except (TypeError, ValueError, RuntimeError, IndexError):
                    return positions, False
        c, d = outs
        tol = 1e-2 * (1.0 + float(c.abs().max()))
        same_early = bool((d[:-1] - c[:-1]).abs().max() <= tol)
        return positions, same_early and not torch.equal(d[-1], c[-1])

    def logit_map(self) -> Any:
        """What the model does to its head's output before returning logits (None: nothing),
        e.g. Cohere's ``logit_scale``, Granite's ``logits_scaling``, Gemma-2's final
        soft-capping. Candidates come from the config; the one kept is checked once against
        the model's own logits on a few tokens. A model whose logits match none of them is
        refused (its scores would be silently wrong)."""
        if "_logit_map_v" in self.__dict__:
            return self.__dict__["_logit_map_v"]
        import torch

        cfg = self.text_config

        def num(key: str) -> float | None:
            v = getattr(cfg, key, None)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v not in (0, 1)
            return float(v) if ok else None

        cands: list[tuple[str, Any]] = []
        # Gemma-2/3, RecurrentGemma; xLSTM
        for key in ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap"):
            if (cap := num(key)) is not None:
                cands.append((f"soft-capping at {cap:g}",
                              lambda z, cap=cap: torch.tanh(z / cap) * cap))
        for key in ("logit_scale", "lm_head_multiplier"):
            if (f := num(key)) is not None:
                cands.append((f"x {key}", lambda z, f=f: z * f))
        if (f := num("logits_scaling")) is not None:  # Granite divides, HyperCLOVA X multiplies
            cands += [("/ logits_scaling", lambda z, f=f: z / f),
                      ("x logits_scaling", lambda z, f=f: z * f)]
        if (f := num("logits_mup_width_multiplier")) is not None:  # Inkling divides
            cands.append(("/ logits_mup_width_multiplier", lambda z, f=f: z / f))
        cands.append(("none", None))
        x = self._probe_ids()
        with torch.no_grad():
            full = self.model(input_ids=x, **_without_cache(self.model)).logits[0].float()
            hid = self.decoder(input_ids=x, **self.no_cache).last_hidden_state[0]
            ours = self._head_logits(hid).to(full.device)
            later = x.clone()
            later[0, -1] = x[0, 0] if x[0, -1] != x[0, 0] else x[0, 1]  # another token
            moved = self.model(input_ids=later, **_without_cache(self.model)).logits[0].float()
        if not bool(torch.isfinite(full).all()):  # not a transform: the model overflows
            raise InputError(
                f"The model {self.info.id} gives NaN or inf logits on a few plain tokens (it "
                f"overflows in {str(self.dtype).replace('torch.', '')}); load it in float32 "
                f"(--dtype float32) or bfloat16."
            )
        if not torch.allclose(moved[:-1], full[:-1], atol=1e-3 * (1.0 + float(full.abs().max()))):
            raise CapabilityError(
                f"The model {self.info.id} ({type(self.model).__name__}) is not a causal LM: "
                f"its outputs at a position change with later tokens (an encoder such as "
                f"BERT, or a decoder class with is_decoder off); attrlens explains models "
                f"that read left to right."
            )
        tol = 1e-2 * (1.0 + float(full.abs().max()))
        # the closest candidate (a soft cap far above small probe logits is close to none)
        errs = [float(((fn(ours) if fn else ours) - full).abs().max()) for _n, fn in cands]
        best = min(range(len(errs)), key=errs.__getitem__)
        name, fn = cands[best]
        err = errs[best]
        if err <= tol:
            self.__dict__["_logit_map_v"] = fn
            if fn is not None:
                log.info("%s: logits = %s of the head's output", self.info.id, name)
            return fn
        raise CapabilityError(
            f"The model {self.info.id} does something to its LM head's output that attrlens "
            f"does not know (max |difference| {err:.3g} from its own logits on a probe; "
            f"tried: {', '.join(n for n, _ in cands)}): its scores would be wrong. Report "
            f"the architecture ({type(self.model).__name__})."
        )

    @property
    def lm_head(self) -> Any:
        return self.model.get_output_embeddings()

    def output_logits(self, hidden: Any) -> Any:
        """float32 logits of the LM head at the given hidden states (..., H) -> (..., V).

        In a reduced-precision model the head runs in float32 too (a float32 copy of its
        weight, made once): it is applied only at output positions, so this costs little,
        and it keeps reduced-dtype attributions close to float32 ones (the head's bf16
        rounding otherwise swaps the ranks of near-equal features).
        """
        z = self._head_logits(hidden)
        fn = self.logit_map()
        return z if fn is None else fn(z)

    def _head_logits(self, hidden: Any) -> Any:
        """float32 output of the LM head itself (no logit map)."""
        import torch

        head = self.lm_head
        weight = getattr(head, "weight", None)
        if weight is None or weight.dtype == torch.float32 or not _plain_linear(head):
            return self._in_vocab(head(hidden).float())
        w32 = getattr(self, "_head_fp32", None)
        if w32 is None or w32.device != _execution_device(head, weight):
            # kept across calls: never an inference tensor, which autograd (the gradient
            # methods) could not use, even when first made inside inference mode
            with torch.inference_mode(False), torch.no_grad(), onloaded(head):
                w32 = head.weight.detach().float()
                b = head.bias.detach().float() if head.bias is not None else None
            self._head_fp32 = w32
            self._head_bias_fp32 = b
        h = hidden.to(w32.device).float()
        exact_bf16 = self._bf16_exact(hidden, weight, w32) and not torch.is_grad_enabled()
        with bf16_products() if exact_bf16 else contextlib.nullcontext():
            return self._in_vocab(torch.nn.functional.linear(h, w32, self._head_bias_fp32))

    def _in_vocab(self, z: Any) -> Any:
        """The logits of the model's real vocabulary: its first ``unpadded_vocab_size`` (a
        config key of Inkling's; its logits past it are cut off), else all of them."""
        n = self.vocab_rows
        return z if n is None else z[..., :n]

    @property
    def vocab_rows(self) -> int | None:
        """How many of the head's rows are the model's vocabulary (``unpadded_vocab_size``),
        or None: all of them."""
        n = getattr(self.text_config, "unpadded_vocab_size", None)
        return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    def _bf16_exact(self, hidden: Any, weight: Any, on: Any) -> bool:
        """Whether the head's float32 products of ``hidden`` and ``weight`` (computed where
        ``on`` is) may run on the CPU's bf16 units: both are bf16 numbers, on the CPU."""
        import torch

        return bool(self.bf16_head_products and hidden.dtype == torch.bfloat16
                    and weight.dtype == torch.bfloat16 and on.device.type == "cpu")

    def output_token_logprobs(self, hidden: Any, token_ids: Any, *,
                              budget: int = 1 << 20, min_slice: int = 1024) -> Any:
        """float32 log p(token_ids[t]) at hidden[..., t, :]: (..., T, H) -> (..., T).

        The normaliser is a running log-sum-exp over slices of the vocabulary, each slice of
        the head's weight read once for all rows (at most ``budget`` logits and ``budget``
        weights at a time), in float32 also in a reduced-precision model (each slice
        converted on the fly, so no float32 copy of the whole head is kept); the token's own
        logit is one float32 dot product. Equal to log-softmax of :meth:`output_logits` up
        to float32 rounding. No gradient flows through it (scoring only).
        """
        import torch

        self.logit_map()  # (its first call runs the model: before the head is onloaded)
        with torch.no_grad(), onloaded(self.lm_head):
            return self._output_token_logprobs(hidden, token_ids, budget, min_slice)

    def _output_token_logprobs(self, hidden: Any, token_ids: Any, budget: int,
                               min_slice: int) -> Any:
        import torch

        head = self.lm_head
        weight = getattr(head, "weight", None)
        T = token_ids.shape[0]
        if weight is None or not _plain_linear(head):  # (a head of its own: its forward)
            logits = self.output_logits(hidden)
            idx = token_ids.to(logits.device).expand(*logits.shape[:-2], T)[..., None]
            return logits.gather(-1, idx)[..., 0] - torch.logsumexp(logits, dim=-1)
        fn = self.logit_map()
        bias = head.bias
        lead = hidden.shape[:-2]
        h = hidden.to(weight.device).reshape(-1, hidden.shape[-1]).float()  # (R, H)
        tok = token_ids.to(weight.device).repeat(h.shape[0] // T)  # row r predicts tok[r]
        z_t = (h * weight[tok].float()).sum(-1)
        if bias is not None:
            z_t = z_t + bias[tok].float()
        if fn is not None:
            z_t = fn(z_t)
        V, R = min(weight.shape[0], self.vocab_rows or weight.shape[0]), h.shape[0]
        # at most ``budget`` logits and ``budget`` converted weights per slice, each in one
        # buffer reused by every slice (fresh buffers cost page faults on every slice)
        step = max(min_slice, min(V, budget // max(1, R), budget // h.shape[1]))
        zbuf = torch.empty(R * step, device=h.device)
        wbuf = None if weight.dtype == torch.float32 else torch.empty(
            step * h.shape[1], device=h.device)
        m = torch.full((R,), -float("inf"), device=h.device)
        acc = torch.zeros(R, device=h.device)
        exact_bf16 = self._bf16_exact(hidden, weight, weight)
        with bf16_products() if exact_bf16 else contextlib.nullcontext():
            for v0 in range(0, V, step):
                n = min(step, V - v0)
                w = weight[v0 : v0 + n]
                if wbuf is not None:
                    w = wbuf[: w.numel()].view(w.shape).copy_(w)
                z = torch.mm(h, w.t(), out=zbuf[: R * n].view(R, n))
                if bias is not None:
                    z += bias[v0 : v0 + n].float()
                if fn is not None:
                    z = fn(z)
                m_new = torch.maximum(m, z.amax(-1))
                acc = acc * torch.exp(m - m_new) + z.sub_(m_new[:, None]).exp_().sum(-1)
                m = m_new
        return (z_t - (m + torch.log(acc))).reshape(*lead, T)

    @property
    def input_embeddings(self) -> Any:
        return self.model.get_input_embeddings()

    def scoring_batch_tokens(self) -> int:
        """Tokens (key columns) per forward of the scoring engine: 4,096 on the CPU and MPS
        (measured there: larger forwards gain nothing on a few cores); on a CUDA GPU as many
        as a quarter of its free memory holds at one layer's working set per token (hidden
        states, attention and MLP activations in the model's dtype), from 4,096 to 65,536.
        An estimate too large costs a halved retry (out-of-memory errors are caught)."""
        if self.device.type != "cuda":
            return 4096
        free = self.free_memory()
        cfg = self.text_config
        hidden = int(getattr(cfg, "hidden_size", 0) or 0)
        inter = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
        if not free or not hidden:
            return 4096
        per_token = (6 * hidden + 3 * inter) * self.dtype.itemsize
        return int(min(65536, max(4096, free // 4 // per_token)))

    def free_memory(self) -> int | None:
        """Bytes free for new tensors on the model's input device: the CUDA driver's free
        memory on a GPU, psutil's available memory (reclaimable caches included) on the
        CPU; None where unknown (MPS)."""
        import torch

        try:
            if self.device.type == "cuda":
                return int(torch.cuda.mem_get_info(self.device)[0])
            if self.device.type == "cpu":
                import psutil

                return int(psutil.virtual_memory().available)
        except (ImportError, OSError, RuntimeError, AttributeError):
            pass
        return None

    def embedding_matrix(self) -> Any:
        """The input-embedding matrix (V, H), detached, on the embedding's execution device
        (also when ``device_map`` offloaded it)."""
        emb = self.input_embeddings
        with onloaded(emb):
            return emb.weight.detach()

    def rotary_module(self) -> Any:
        """The model's rotary-embedding module (RoPE models), or raise CapabilityError."""
        rot = getattr(self.decoder, "rotary_emb", None)
        if rot is None:
            raise CapabilityError(
                f"The model {self.info.id} has no rotary position module; RoPE-space "
                f"methods need a RoPE decoder (Llama, Qwen, Mistral, ...)."
            )
        return rot
