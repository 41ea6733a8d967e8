"""A tiny random Llama with a character-level tokenizer, saved as an HF model directory,
and a small corpus: enough to run `longrope search` end to end in seconds."""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch


def make_tiny_model_dir(path: Path, native: int = 32, seed: int = 0) -> Path:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=native,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=1)
    model = LlamaForCausalLM(cfg).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def make_corpus(path: Path, n_docs: int = 12, chars: int = 300, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    words = "the grass is green the sky is blue the sun is yellow here we go there and back again".split()
    lines = []
    for i in range(n_docs):
        idx = torch.randint(len(words), (chars // 4,), generator=g).tolist()
        lines.append(json.dumps({"name": f"doc{i:02d}", "text": " ".join(words[j] for j in idx)[:chars]}))
    path.write_text("\n".join(lines) + "\n")
    return path
