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
    import json as _json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([inspect.getsource(_json)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved random tiny Llama (native context 32) with a tokenizer: a --model directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok), bos_token_id=0, eos_token_id=1)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A .jsonl corpus of a few long stdlib sources."""
    import inspect
    import json as _json

    import argparse, textwrap, typing, dataclasses, enum, pathlib  # noqa: E401

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    mods = [argparse, textwrap, typing, dataclasses, enum, pathlib]
    with open(path, "w") as f:
        for m in mods:
            f.write(_json.dumps({"text": inspect.getsource(m), "name": m.__name__}) + "\n")
    return path
