"""Shared fixtures: a tiny randomly initialised Llama model with a small byte-level BPE
tokenizer (built in memory, no download), and the embedded default model for integration
tests."""

from __future__ import annotations

import os

import numpy as np
import pytest
from server_fixtures import *

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "What is the capital of France? Answer with one word. The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine.",
    "Explain why the sky is blue. Because of Rayleigh scattering of sunlight.",
    "Sentences end with a period. Words are separated by spaces; numbers 123 456.",
] * 20


def make_tiny_tokenizer():
    """A byte-level BPE fast tokenizer trained on a few sentences, with ChatML tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        bos_token="<|im_start|>",
    )
    fast.chat_template = CHATML
    return fast


def make_sentencepiece_tokenizer():
    """A Llama-2 / Mistral style tokenizer (SentencePiece BPE as transformers converts it):
    spaces become "▁", a "▁" is put before every text it is given, BOS is added, byte
    fallback; ChatML tokens. Its merges were learnt within words, as SentencePiece's are."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=[f"<0x{i:02X}>" for i in range(256)],
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.pre_tokenizer = None  # the legacy Llama-2 layout: all of it in the normalizer
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="</s>",
    )
    fast.chat_template = CHATML
    return fast


def make_tiny_model(seed: int = 0, *, n_layers: int = 2):
    """An HFModel around a randomly initialised 2-layer Llama (RoPE, GQA)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from attrlens.models.base import ModelInfo
    from attrlens.models.hf import HFModel

    tok = make_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights make the random model's outputs input-sensitive
        for p in model.parameters():
            p.mul_(3.0)
    return HFModel(model, tok, info=ModelInfo("tiny-llama-test", None))


def save_model_dir(model, path):
    """``model`` (an HFModel) saved as a model directory at ``path`` (returned)."""
    model.model.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_model):
    """The tiny test model saved as a local transformers directory (one per test module)."""
    return save_model_dir(tiny_model, tmp_path_factory.mktemp("tiny"))


def hub_snapshot(root, monkeypatch, repo_id: str, copy_of=None):
    """A Hugging Face cache under ``root`` (used by huggingface_hub from here on, and
    attrlens' own cache beside it) holding a snapshot of ``repo_id``: a copy of the
    directory ``copy_of``, or empty. Returns the snapshot directory."""
    import shutil

    from huggingface_hub import constants

    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / "0123abcd"
    if copy_of is not None:
        shutil.copytree(copy_of, snap)
    else:
        snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root / "hub"))
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(root / "attrlens"))
    return snap


def explain_argv(model_dir, prompt: str, output: str, json_path) -> list[str]:
    """``attrlens explain`` arguments: LOO of ``output`` on a float32 model directory,
    quiet, the result to ``json_path``."""
    return ["explain", prompt, "--model", str(model_dir), "--method", "loo", "--output-text",
            output, "--dtype", "float32", "--quiet", "--json", str(json_path)]


def spy_sdpa(monkeypatch) -> list[tuple[int, int, bool]]:
    """(query heads, key heads, enable_gqa) of every torch SDPA call from here on."""
    import torch

    calls: list[tuple[int, int, bool]] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q.shape[1], k.shape[1], bool(kwargs.get("enable_gqa", False))))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def make_sliding_model(kind: str):
    """A tiny random Mistral (every layer slides over 5 tokens) or Qwen2 (layer 0 full,
    layer 1 sliding: one mask per kind of layer)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from attrlens.models.base import ModelInfo
    from attrlens.models.hf import HFModel

    tok = make_tiny_tokenizer()
    common = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 512, "sliding_window": 5,
              "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
              "bos_token_id": tok.bos_token_id, "tie_word_embeddings": False}
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True,
                                             max_window_layers=1))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    model.eval()
    return HFModel(model, tok, info=ModelInfo(f"tiny-{kind}-test", None))


@pytest.fixture(scope="session")
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def default_model():
    import attrlens

    # a fixed dtype: test values must not depend on which dtype is faster on this CPU;
    # ATTRLENS_TEST_DEVICE (e.g. cuda) runs the integration tests on that device
    device = os.environ.get("ATTRLENS_TEST_DEVICE", "auto")
    return attrlens.load_model(dtype="float32", device=device)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
