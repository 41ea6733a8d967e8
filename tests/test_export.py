"""Export to plain transformers / vLLM: config dicts, import of HF longrope configs, and logits
parity of the exported directory loaded by plain transformers in a separate process."""
import json
import math
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from longrope.cli import main
from longrope.errors import UsageError
from longrope.export.hf import SIDECAR
from longrope.hf_config import (
    check_exportable,
    describe_rope_config,
    extension_from_hf_config,
    hf_config_dict,
    load_factors,
    to_rope_parameters,
    to_rope_scaling,
)
from longrope.export.vllm import default_mscale, vllm_mismatches, vllm_rope
from longrope.factors import RopeExtension
from longrope.atomic import DIR_MODE, FILE_MODE
from longrope.methods import attention_factor, build_extension
from longrope.seam import install_rope, rotary_spec
from longrope.rope import RotarySpec

ARCHS = {"llama": {}, "qwen2": {}, "phi3": {"partial_rotary_factor": 0.5}}  # phi3: rotary dim 8 of head dim 16
L, TARGET = 32, 128  # native context of the tiny models (conftest), target context
SHORT_T, LONG_T = 24, 80  # one sequence on each side of L
from helpers import cli_error


def searched_like(spec: RotarySpec) -> RopeExtension:
    """A LongRoPE-shaped extension: monotone long factors and distinct short factors."""
    long = build_extension("yarn", spec, TARGET).long_factor
    short = [1.0 + 0.02 * i for i in range(spec.half)]
    return RopeExtension("longrope", long, L, TARGET, short_factor=short)


def phi3_style_config() -> dict:
    """What a Phi-3-mini-128k config carries (shape only; values invented)."""
    return {
        "model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32, "rope_theta": 10000.0,
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        "rope_scaling": {"type": "longrope", "long_factor": [1.0 + i for i in range(48)],
                         "short_factor": [1.0 + 0.01 * i for i in range(48)]},
    }


# -- config dicts ----------------------------------------------------------------------------------
def test_rope_scaling_keys_and_short_defaults_to_long():
    ext = RopeExtension("longrope", [1.0, 2.0, 4.0], 4096, 131072)
    d = to_rope_scaling(ext)
    assert d["rope_type"] == "longrope"
    assert d["short_factor"] == d["long_factor"] == [1.0, 2.0, 4.0]  # our runtime uses long at every length
    assert d["factor"] == 32.0 and d["original_max_position_embeddings"] == 4096
    assert d["attention_factor"] == pytest.approx(1.1902, abs=1e-4)  # sqrt(1 + ln 32 / ln 4096), LongRoPE section 3.3
    assert "short_mscale" not in d  # vLLM's default already equals the LongRoPE attention factor


def test_peer_methods_carry_explicit_mscale_for_vllm():
    spec = RotarySpec(16, 10000.0, L)
    for name, want in (("pi", 1.0), ("yarn", 0.1 * math.log(TARGET / L) + 1)):
        ext = build_extension(name, spec, TARGET)
        d = to_rope_scaling(ext)
        assert d["attention_factor"] == pytest.approx(want)
        assert d["short_mscale"] == d["long_mscale"] == pytest.approx(want)
        config = {"max_position_embeddings": TARGET, "rope_scaling": d}
        assert vllm_mismatches(config, ext) == []


def test_vllm_view_of_an_export():
    ext = searched_like(RotarySpec(16, 10000.0, L))
    config = hf_config_dict({"rope_theta": 10000.0, "max_position_embeddings": L}, ext)
    assert vllm_mismatches(config, ext) == []
    served_long = vllm_rope(config)  # default --max-model-len = max_position_embeddings
    assert served_long.uses_long and served_long.factors == ext.long_factor
    assert served_long.mscale == pytest.approx(default_mscale(TARGET, L)) == pytest.approx(attention_factor(ext))
    assert not vllm_rope(config, max_model_len=L).uses_long


def test_hf_config_dict_from_5x_style_config():
    ext = searched_like(RotarySpec(16, 500000.0, L))
    cfg5 = {"model_type": "llama", "dtype": "bfloat16", "max_position_embeddings": L,
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default", "partial_rotary_factor": 0.5}}
    d = hf_config_dict(cfg5, ext)
    assert "rope_parameters" not in d  # 4.x would ignore it; 5.x reads rope_scaling + rope_theta
    assert d["rope_theta"] == 500000.0 and d["partial_rotary_factor"] == 0.5
    assert d["max_position_embeddings"] == TARGET and d["original_max_position_embeddings"] == L
    assert d["rope_scaling"]["rope_type"] == "longrope" and d["torch_dtype"] == "bfloat16"
    p = to_rope_parameters(ext, 500000.0, 0.5)
    assert p["rope_theta"] == 500000.0 and p["partial_rotary_factor"] == 0.5 and p["long_factor"] == list(ext.long_factor)
    phi3 = hf_config_dict({"model_type": "phi3", "rope_theta": 1e4}, ext)["rope_scaling"]
    assert sorted(phi3) == ["long_factor", "short_factor", "type"]  # default attention factor: Phi-3's form
    phi3 = hf_config_dict({"model_type": "phi3", "rope_theta": 1e4}, ext.with_(attention_factor=1.0))["rope_scaling"]
    assert phi3["attention_factor"] == 1.0  # only the full form can say it (4.x Phi3Config then refuses, loudly)
    with pytest.raises(UsageError, match="per layer type"):
        hf_config_dict({"rope_parameters": {"full_attention": {"rope_theta": 1e4}, "sliding_attention": {}}}, ext)


def test_round_trip_through_hf_config():
    ext = searched_like(RotarySpec(16, 10000.0, L)).with_(attention_factor=1.3)
    back = extension_from_hf_config(hf_config_dict({"rope_theta": 1e4, "max_position_embeddings": L}, ext))
    assert (back.long_factor, back.short_factor) == (ext.long_factor, ext.short_factor)
    assert (back.original_max_position_embeddings, back.max_position_embeddings) == (L, TARGET)
    assert back.attention_factor == 1.3
    same = RopeExtension("pi", [4.0] * 8, L, TARGET, attention_factor=1.0)
    assert extension_from_hf_config(hf_config_dict({"rope_theta": 1e4}, same)).short_factor is None


def test_short_attention_factor_in_configs():
    """transformers and llama.cpp carry one attention factor (the long one, at every length); vLLM's
    short_mscale carries the short one; our reader takes it back from the mscale pair."""
    spec = RotarySpec(16, 10000.0, L)
    ext = searched_like(spec).with_(short_attention_factor=1.0)
    d = to_rope_scaling(ext)
    assert d["attention_factor"] == pytest.approx(attention_factor(ext)) != 1.0
    assert (d["short_mscale"], d["long_mscale"]) == (1.0, d["attention_factor"])
    config = hf_config_dict({"rope_theta": 1e4, "max_position_embeddings": L}, ext)
    assert vllm_mismatches(config, ext) == []
    assert vllm_mismatches(config, ext.with_(short_attention_factor=None)) == ["short mscale 1.0 != attention "
                                                                              f"factor {attention_factor(ext)}"]
    back = extension_from_hf_config(config)
    assert back == ext.with_(attention_factor=attention_factor(ext), metadata=back.metadata)
    assert "attention_factor" in hf_config_dict({"model_type": "phi3", "rope_theta": 1e4}, ext)["rope_scaling"]
    _, notes = check_exportable(ext, spec, target="llama.cpp")
    assert len(notes) == 1 and "llama.cpp has one attention factor" in notes[0]
    assert check_exportable(ext.with_(short_attention_factor=attention_factor(ext)), spec)[1] == []


def test_import_phi3_style_config():
    ext = extension_from_hf_config(phi3_style_config(), source="phi3")
    assert ext.method == "longrope" and ext.half_dim == 48
    assert (ext.original_max_position_embeddings, ext.max_position_embeddings) == (4096, 131072)
    assert ext.attention_factor is None and attention_factor(ext) == pytest.approx(1.1902, abs=1e-4)
    facts = describe_rope_config(phi3_style_config())
    assert facts["scale"] == 32.0 and facts["attention_factor"] == pytest.approx(1.1902, abs=1e-4)
    assert len(facts["long_factor"]) == 48 and len(facts["short_factor"]) == 48
    assert describe_rope_config({"rope_theta": 1e4, "max_position_embeddings": 2048}) == {}
    explicit = phi3_style_config()
    explicit["rope_scaling"]["factor"] = 16.0  # 5.x takes the default attention factor from `factor`
    assert extension_from_hf_config(explicit).attention_factor == pytest.approx(math.sqrt(1 + math.log(16) / math.log(4096)))


def test_load_factors_accepts_our_json_hf_config_and_model_dir(tmp_path):
    ours = searched_like(RotarySpec(16, 10000.0, L))
    ours.save(tmp_path / "factors.json")
    assert load_factors(tmp_path / "factors.json") == ours
    model_dir = tmp_path / "phi3"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(phi3_style_config()))
    assert load_factors(model_dir) == load_factors(model_dir / "config.json")
    assert load_factors(model_dir).half_dim == 48


@pytest.mark.parametrize("content, message", [
    ({"rope_theta": 1e4, "max_position_embeddings": 2048, "model_type": "llama"}, "not longrope"),
    ({"model_type": "phi3", "max_position_embeddings": 8, "original_max_position_embeddings": 4,
      "rope_scaling": {"type": "longrope", "long_factor": [[1.0, 2.0], [1.0, 2.0]], "short_factor": [1.0, 1.0]}},
     "per layer"),
    ({"method": "longrope", "long_factor": [[1.0, 2.0]], "original_max_position_embeddings": 4,
      "max_position_embeddings": 8}, "per layer"),
    ({"hello": 1}, "neither"),
    ({"model_type": "phi3", "max_position_embeddings": 8,
      "rope_scaling": {"type": "longrope", "long_factor": [1.0, 2.0], "short_factor": [1.0, 1.0]}},
     "original_max_position_embeddings"),
])
def test_load_factors_rejects(tmp_path, content, message):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UsageError, match=message):
        load_factors(path)
    with pytest.raises(UsageError, match="not found"):
        load_factors(tmp_path / "missing.json")


# -- the exported directory in plain transformers -------------------------------------------------
PLAIN_LOAD = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM
    out = {}
    for arch, path in zip(sys.argv[2::2], sys.argv[3::2]):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
        for T in (%d, %d):
            ids = torch.randint(0, 97, (1, T), generator=torch.Generator().manual_seed(T))
            with torch.inference_mode():
                out[arch, T] = model(input_ids=ids).logits
    assert not any(m.split(".")[0] == "longrope" for m in sys.modules), "longrope must not be imported"
    torch.save(out, sys.argv[1])
""") % (SHORT_T, LONG_T)


def run_plain_transformers(python: str, dirs: dict, out_file) -> dict:
    """Logits of each exported dir, from plain transformers in a fresh interpreter (no longrope)."""
    args = [str(out_file)] + [x for arch, d in dirs.items() for x in (arch, str(d))]
    subprocess.run([python, "-c", PLAIN_LOAD, *args], check=True, capture_output=True, timeout=600,
                   cwd=str(out_file.parent))
    return torch.load(out_file)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each tiny architecture saved as a source model, then exported with `longrope export`."""
    from conftest import tiny_model  # a module-scoped fixture cannot use make_tiny_model

    root = tmp_path_factory.mktemp("export")
    cases = {}
    for arch, overrides in ARCHS.items():
        model = tiny_model(arch, **overrides)
        model.save_pretrained(root / f"{arch}-src")
        os.chmod(root / f"{arch}-src" / "model.safetensors", 0o600)  # as safetensors' own writer leaves it
        ext = searched_like(rotary_spec(model))
        ext.save(root / f"{arch}-factors.json")
        rc = main(["export", "--model", str(root / f"{arch}-src"), "--factors", str(root / f"{arch}-factors.json"),
                   "--out", str(root / f"{arch}-hf")])
        assert rc == 0
        cases[arch] = (model, ext, root / f"{arch}-hf")
    return root, cases


def our_logits(model, ext, T):
    install_rope(model, ext)
    ids = torch.randint(0, 97, (1, T), generator=torch.Generator().manual_seed(T))
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_exported_dir_layout_and_config(exported):
    root, cases = exported
    for arch, (model, ext, out) in cases.items():
        assert (out / "model.safetensors").is_file() and (out / SIDECAR).is_file()
        config = json.loads((out / "config.json").read_text())
        rs = config["rope_scaling"]
        assert rs["long_factor"] == list(ext.long_factor) and rs["short_factor"] == list(ext.short_factor)
        assert config["original_max_position_embeddings"] == L
        if arch == "phi3":  # Phi-3's own three keys: the only form transformers 4.x's Phi3Config accepts
            assert rs == {"type": "longrope", "short_factor": rs["short_factor"], "long_factor": rs["long_factor"]}
        else:
            assert rs["rope_type"] == "longrope" and rs["factor"] == TARGET / L
            assert rs["original_max_position_embeddings"] == L
            assert rs["attention_factor"] == pytest.approx(attention_factor(ext))
        assert config["max_position_embeddings"] == TARGET and "rope_parameters" not in config
        assert vllm_mismatches(config, ext) == []
        assert load_factors(out).long_factor == ext.long_factor  # --factors accepts an exported dir
        for path in [out, *out.rglob("*")]:  # readable by a serving container, whatever the source's modes
            assert stat.S_IMODE(path.stat().st_mode) == (DIR_MODE if path.is_dir() else FILE_MODE), path
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_plain_transformers_logits_equal_our_runtime(exported):
    """The acceptance test of the hf format: same logits below and above the native length."""
    root, cases = exported
    theirs = run_plain_transformers(sys.executable, {a: c[2] for a, c in cases.items()}, root / "plain5.pt")
    for arch, (model, ext, _) in cases.items():
        for T in (SHORT_T, LONG_T):
            diff = float((theirs[arch, T] - our_logits(model, ext, T)).abs().max())
            assert diff < 1e-4, f"{arch} T={T}: max abs logit diff {diff}"
        install_rope(model, None)  # the unscaled model differs: the config is really in force
        assert float((theirs[arch, LONG_T] - our_logits(model, None, LONG_T)).abs().max()) > 1e-3


# -- bad input: one line, exit 2, nothing written --------------------------------------------------
def test_bad_input_is_refused_before_writing(exported, tmp_path, capsys):
    root, cases = exported
    src, factors = str(root / "llama-src"), str(root / "llama-factors.json")
    ext = RopeExtension.load(factors)
    base = ["export", "--model", src, "--out"]

    err = cli_error(capsys, base + [str(root / "llama-hf"), "--factors", factors])
    assert "already exists" in err and "--force" in err

    wrong = tmp_path / "wrong.json"
    RopeExtension("longrope", [1.0] * 5, L, TARGET).save(wrong)
    assert "takes 8" in cli_error(capsys, base + [str(tmp_path / "a"), "--factors", str(wrong)])

    ntk = tmp_path / "dyn.json"
    build_extension("dynamic-ntk", rotary_spec(cases["llama"][0]), TARGET).save(ntk)
    assert "recomputes its factors" in cli_error(capsys, base + [str(tmp_path / "b"), "--factors", str(ntk)])

    start = tmp_path / "start.json"
    ext.with_(start_token=4).save(start)
    assert "--drop-start-token" in cli_error(capsys, base + [str(tmp_path / "c"), "--factors", str(start)])

    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=97)).save_pretrained(tmp_path / "gpt2")
    err = cli_error(capsys, ["export", "--model", str(tmp_path / "gpt2"), "--factors", factors, "--out", str(tmp_path / "d")])
    assert "rotary" in err or "rope" in err.lower()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["dyn.json", "gpt2", "start.json", "wrong.json"]


def test_drop_start_token_and_force(exported, tmp_path, capsys):
    root, _ = exported
    ext = RopeExtension.load(root / "llama-factors.json")
    start = tmp_path / "start.json"
    ext.with_(start_token=4).save(start)
    out = tmp_path / "out"
    argv = ["export", "--model", str(root / "llama-src"), "--factors", str(start), "--out", str(out), "--drop-start-token"]
    assert main(argv) == 0
    assert "start token n_hat=4 dropped" in capsys.readouterr().out
    sidecar = json.loads((out / SIDECAR).read_text())
    assert sidecar["extension"]["start_token"] == 0 and sidecar["notes"]
    # --force replaces a finished export; a failing --force run leaves it as it was
    before = (out / "config.json").read_text()
    bad = tmp_path / "bad.json"
    RopeExtension("longrope", [1.0] * 5, L, TARGET).save(bad)
    assert main(["export", "--model", str(root / "llama-src"), "--factors", str(bad), "--out", str(out), "--force"]) == 2
    assert (out / "config.json").read_text() == before
    assert main(argv + ["--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "out", "start.json"]


def test_export_of_a_model_that_must_be_loaded(exported, tmp_path):
    """Sources that cannot be copied (.bin weights here, .gguf files) are loaded and re-saved."""
    from transformers import AutoModelForCausalLM

    root, cases = exported
    model, ext, _ = cases["qwen2"]
    src = tmp_path / "bin-src"
    src.mkdir()
    (src / "config.json").write_text((root / "qwen2-src" / "config.json").read_text())
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    ext.save(tmp_path / "f.json")
    assert main(["export", "--model", str(src), "--factors", str(tmp_path / "f.json"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "tokenizer.json").exists()  # the source had none
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="sdpa").eval()
    ids = torch.randint(0, 97, (1, LONG_T), generator=torch.Generator().manual_seed(LONG_T))
    with torch.inference_mode():
        theirs = plain(input_ids=ids).logits
    assert float((theirs - our_logits(model, ext, LONG_T)).abs().max()) < 1e-4


def test_export_never_replaces_its_source_and_leaves_the_run_behind(exported, tmp_path, capsys):
    """--out that is or holds the source model is refused even with --force; a fine-tuning run's
    checkpoints and record stay behind; a tokenizer capped at the old window is lengthened."""
    import shutil

    root, _ = exported
    factors = str(root / "llama-factors.json")
    parent = tmp_path / "parent"
    src = parent / "m"
    shutil.copytree(root / "llama-src", src)
    (parent / "notes.txt").write_text("mine")
    for out in (parent, src):
        err = cli_error(capsys, ["export", "--model", str(src), "--factors", factors, "--out", str(out), "--force"])
        assert "holds the source model" in err
    assert (src / "model.safetensors").is_file() and (parent / "notes.txt").read_text() == "mine"
    (src / "checkpoints" / "step-000002").mkdir(parents=True)
    (src / "checkpoints" / "step-000002" / "optimizer.bin").write_bytes(b"state")
    (src / "finetune.json").write_text("{}")
    (src / "tokenizer_config.json").write_text(json.dumps({"model_max_length": L}))
    out = tmp_path / "out"
    assert main(["export", "--model", str(src), "--factors", factors, "--out", str(out)]) == 0
    assert not (out / "checkpoints").exists() and not (out / "finetune.json").exists()
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == TARGET
    notes = json.loads((out / SIDECAR).read_text())["notes"]
    assert any("left out checkpoints" in n for n in notes) and any(f"{L} -> {TARGET}" in n for n in notes)
