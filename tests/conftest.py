"""Shared test helpers: tiny random models of each RoPE architecture, tokenizers, a saved
model directory, small corpora, and a private cache folder."""
import json
import string
from pathlib import Path

import pytest
import torch


def tiny_config(arch: str, **overrides):
    """A seeded, tiny random config of one of the RoPE architectures we support."""
    from transformers import LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                  tie_word_embeddings=False)
    common.update(overrides)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "phi3":
        return Phi3Config(**common, pad_token_id=0)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, **overrides)
    cfg._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture
def make_tiny_model():
    return tiny_model


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained in a blink on a stdlib module's text."""
    import inspect

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([inspect.getsource(json)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def char_tokenizer():
    """One token per printable character (so n characters are n tokens), BOS = 1."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


def save_tiny_llama(path: Path, tokenizer, seed: int = 0, **overrides) -> Path:
    """A random tiny Llama for `tokenizer`, saved with it as an HF model directory (a --model)."""
    model = tiny_model("llama", seed, vocab_size=len(tokenizer), **overrides)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_model_dir(path: Path, native: int = 32, seed: int = 0) -> Path:
    """A tiny random Llama with the character-level tokenizer: `longrope search` end to end in seconds."""
    return save_tiny_llama(path, char_tokenizer(), seed, max_position_embeddings=native, bos_token_id=1,
                           eos_token_id=1)


def make_corpus(path: Path, n_docs: int = 12, chars: int = 300, seed: int = 0) -> Path:
    """A .jsonl corpus of seeded word salad, `chars` characters per document."""
    g = torch.Generator().manual_seed(seed)
    words = "the grass is green the sky is blue the sun is yellow here we go there and back again".split()
    lines = []
    for i in range(n_docs):
        idx = torch.randint(len(words), (chars // 4,), generator=g).tolist()
        lines.append(json.dumps({"name": f"doc{i:02d}", "text": " ".join(words[j] for j in idx)[:chars]}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved random tiny Llama (native context 32) with a tokenizer: a --model directory."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer(), bos_token_id=0, eos_token_id=1)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A private cache folder (tokens, presets) under the test's tmp_path."""
    monkeypatch.setenv("LONGROPE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A .jsonl corpus of a few long stdlib sources."""
    import inspect

    import argparse, textwrap, typing, dataclasses, enum, pathlib  # noqa: E401

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    mods = [argparse, textwrap, typing, dataclasses, enum, pathlib]
    with open(path, "w") as f:
        for m in mods:
            f.write(json.dumps({"text": inspect.getsource(m), "name": m.__name__}) + "\n")
    return path
