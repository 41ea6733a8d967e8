"""Our factors and attention factors against the installed transformers' rope functions."""
import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longrope.errors import UsageError
from longrope.factors import RopeExtension, is_monotone
from longrope.methods import (
    METHODS,
    attention_factor,
    build_extension,
    dynamic_ntk_scale,
    factors_at_length,
    ntk_factors,
)
from longrope.rope import RotarySpec, longrope_attention_factor, scaled_inv_freq

CASES = [(32, 10000.0, 128), (64, 10000.0, 128), (64, 100000.0, 8192), (128, 500000.0, 4096)]


def hf_config(head_dim, base, L, rope_parameters, max_pos=None):
    params = {"rope_theta": base, **rope_parameters}
    return LlamaConfig(
        hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
        max_position_embeddings=max_pos or L, rope_parameters=params,
    )


def close(ours, theirs, rtol=1e-6):
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=rtol, atol=0)


@pytest.mark.parametrize("d,base,L", CASES)
@pytest.mark.parametrize("scale", [2.0, 8.0, 32.0])
def test_pi_matches_transformers_linear(d, base, L, scale):
    spec = RotarySpec(d, base, L)
    ext = build_extension("pi", spec, int(L * scale))
    inv, att = ROPE_INIT_FUNCTIONS["linear"](hf_config(d, base, L, {"rope_type": "linear", "factor": scale}))
    close(scaled_inv_freq(spec, torch.tensor(ext.long_factor)), inv)
    assert attention_factor(ext) == att == 1.0


@pytest.mark.parametrize("d,base,L", CASES)
@pytest.mark.parametrize("scale", [2.0, 8.0, 32.0])
def test_yarn_matches_transformers(d, base, L, scale):
    spec = RotarySpec(d, base, L)
    ext = build_extension("yarn", spec, int(L * scale))
    cfg = hf_config(d, base, L, {"rope_type": "yarn", "factor": scale, "original_max_position_embeddings": L})
    inv, att = ROPE_INIT_FUNCTIONS["yarn"](cfg)
    close(scaled_inv_freq(spec, torch.tensor(ext.long_factor)), inv)
    assert math.isclose(attention_factor(ext), att, rel_tol=1e-9)


@pytest.mark.parametrize("d,base,L", CASES)
@pytest.mark.parametrize("scale", [2.0, 8.0, 32.0])
def test_llama3_matches_transformers(d, base, L, scale):
    spec = RotarySpec(d, base, L)
    ext = build_extension("llama3", spec, int(L * scale))
    cfg = hf_config(d, base, L, {"rope_type": "llama3", "factor": scale, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": L})
    inv, att = ROPE_INIT_FUNCTIONS["llama3"](cfg)
    close(scaled_inv_freq(spec, torch.tensor(ext.long_factor)), inv)
    assert attention_factor(ext) == att


@pytest.mark.parametrize("d,base,L", CASES)
@pytest.mark.parametrize("alpha", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("mult", [0.5, 1.0, 3.0, 16.0])
def test_dynamic_ntk_matches_transformers(d, base, L, alpha, mult):
    spec = RotarySpec(d, base, L)
    seq_len = int(L * mult)
    ext = build_extension("dynamic-ntk", spec, 16 * L).with_(metadata={"alpha": alpha})
    cfg = hf_config(d, base, L, {"rope_type": "dynamic", "factor": alpha})
    inv, _ = ROPE_INIT_FUNCTIONS["dynamic"](cfg, seq_len=seq_len)
    close(scaled_inv_freq(spec, factors_at_length(ext, spec, seq_len)), inv)


@pytest.mark.parametrize("d,base,L", CASES)
def test_longrope_file_factors_match_transformers(d, base, L):
    spec = RotarySpec(d, base, L)
    g = torch.Generator().manual_seed(d)
    long = torch.sort(1 + 7 * torch.rand(d // 2, generator=g)).values.tolist()
    short = torch.sort(1 + 0.5 * torch.rand(d // 2, generator=g)).values.tolist()
    ext = RopeExtension("longrope", long, L, 8 * L, short_factor=short)
    cfg = hf_config(d, base, L, {"rope_type": "longrope", "long_factor": long, "short_factor": short,
                                 "original_max_position_embeddings": L}, max_pos=8 * L)
    inv_long, att = ROPE_INIT_FUNCTIONS["longrope"](cfg, seq_len=L + 1)
    inv_short, _ = ROPE_INIT_FUNCTIONS["longrope"](cfg, seq_len=L)
    close(scaled_inv_freq(spec, factors_at_length(ext, spec, L + 1)), inv_long)
    close(scaled_inv_freq(spec, factors_at_length(ext, spec, L)), inv_short)
    assert math.isclose(attention_factor(ext), att, rel_tol=1e-12)


def test_reference_attention_factors():
    # LongRoPE's default sqrt(1 + ln s / ln L): s=32, L=4096 -> 1.1902; s=16, L=8192 -> 1.1436
    assert abs(longrope_attention_factor(32, 4096) - 1.1902) < 1e-4
    assert abs(longrope_attention_factor(16, 8192) - 1.1436) < 1e-4


def test_ntk_equals_base_change():
    spec = RotarySpec(64, 10000.0, 128)
    s = 8.0
    new_base = 10000.0 * s ** (64 / 62)
    close(scaled_inv_freq(spec, ntk_factors(spec, s)), RotarySpec(64, new_base, 128).inv_freq(), rtol=1e-9)
    assert dynamic_ntk_scale(100, 128) == 1.0 and dynamic_ntk_scale(256, 128) == 2.0


@pytest.mark.parametrize("name", [m for m in METHODS if METHODS[m].factors is not None])
def test_every_peer_method_is_valid_and_monotone(name):
    spec = RotarySpec(64, 10000.0, 128)
    ext = build_extension(name, spec, 1024)
    assert ext.half_dim == 32 and min(ext.long_factor) >= 1.0
    assert is_monotone(ext.long_factor)
    if name == "pi":
        assert set(ext.long_factor) == {8.0}
    if name == "none":
        assert set(ext.long_factor) == {1.0}


def test_unknown_method_and_short_target():
    spec = RotarySpec(64, 10000.0, 128)
    with pytest.raises(UsageError, match="unknown method 'foo'"):
        build_extension("foo", spec, 1024)
    with pytest.raises(UsageError, match="must exceed the native context"):
        build_extension("pi", spec, 128)
    with pytest.raises(UsageError, match="from a file"):
        build_extension("longrope", spec, 1024)
