"""Generation across the short/long switch (docs/library.md): keys cached with the
short factors are stale once the sequence grows past the native context. greedy_generate must
give exactly the tokens of a fresh full forward at every step."""
import pytest
import torch

from longrope.factors import RopeExtension
from longrope.generate import greedy_generate
from longrope.seam import install_rope

NATIVE = 32


def switching_extension(half: int) -> RopeExtension:
    """short_factor != long_factor, so the factors change when the length passes NATIVE."""
    long = [1.0 + 3.0 * i / (half - 1) for i in range(half)]
    short = [1.0 + 0.2 * i / (half - 1) for i in range(half)]
    return RopeExtension(method="longrope", long_factor=long, short_factor=short,
                         original_max_position_embeddings=NATIVE, max_position_embeddings=4 * NATIVE)


@torch.inference_mode()
def fresh_forward_generate(model, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The reference: no cache, the whole sequence re-run at every step (the factors in force
    are always those of the current length)."""
    seq = input_ids
    for _ in range(max_new_tokens):
        logits = model(input_ids=seq, use_cache=False).logits[:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq[0, input_ids.shape[1]:]


@pytest.mark.parametrize("short_attention", [None, 1.0])  # 1.0: the attention factor switches too
def test_greedy_generation_across_the_switch_equals_fresh_forward(make_tiny_model, short_attention):
    model = make_tiny_model("llama", seed=3, max_position_embeddings=NATIVE)
    install_rope(model, switching_extension(half=8).with_(short_attention_factor=short_attention))
    prompt = torch.randint(0, 97, (1, NATIVE - 7), generator=torch.Generator().manual_seed(0))  # below native
    n_new = 20  # ends at NATIVE + 13 tokens: above native
    got = greedy_generate(model, prompt, n_new)
    want = fresh_forward_generate(model, prompt, n_new)
    assert prompt.shape[1] < NATIVE < prompt.shape[1] + n_new
    assert got.tolist() == want.tolist()


@torch.inference_mode()
def test_a_plain_kv_cache_would_be_stale(make_tiny_model):
    """The test above has teeth: keeping the short-factor cache past the switch changes the logits."""
    model = make_tiny_model("llama", seed=3, max_position_embeddings=NATIVE)
    install_rope(model, switching_extension(half=8))
    seq = torch.randint(0, 97, (1, NATIVE + 1), generator=torch.Generator().manual_seed(1))
    cached = model(input_ids=seq[:, :NATIVE], use_cache=True)  # short factors for positions < NATIVE
    stale = model(input_ids=seq[:, NATIVE:], past_key_values=cached.past_key_values).logits[0, -1]
    fresh = model(input_ids=seq, use_cache=False).logits[0, -1]  # long factors everywhere
    assert not torch.allclose(stale, fresh, atol=1e-4)


def test_stop_ends_decoding_after_the_token_it_accepts(make_tiny_model):
    model = make_tiny_model("llama", seed=3, max_position_embeddings=NATIVE)
    prompt = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(0))
    full = greedy_generate(model, prompt, 6)
    stopped = greedy_generate(model, prompt, 6, stop=lambda new: len(new) == 3)
    assert stopped.tolist() == full[:3].tolist()
