"""Shipped factors: `--factors NAME` in every command, listed by `info`, refused for other models."""
import json

import pytest

import longrope.shipped as shipped
from longrope.cli import main
from longrope.errors import UsageError
from longrope.factors import RopeExtension
from longrope.hf_config import load_factors
from longrope.rope import RotarySpec

TINY = RotarySpec(dim=16, base=10000.0, original_max_position_embeddings=32)  # conftest's tiny Llama


def write_factors(folder, name, base=10000.0, half=8):
    ext = RopeExtension(method="longrope", long_factor=[1.0 + 0.1 * i for i in range(half)],
                        short_factor=[1.0] * half, original_max_position_embeddings=32, max_position_embeddings=64,
                        metadata={"model": "tiny-test", "rope_theta": base, "rotary_dim": 2 * half})
    ext.save(folder / f"{name}.json")
    return ext


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch):
    folder = tmp_path / "shipped"
    folder.mkdir()
    monkeypatch.setattr(shipped, "SHIPPED_DIR", folder)
    return folder


def test_every_packaged_file_is_valid_and_describes_its_model():
    for name in shipped.shipped_names():
        ext = RopeExtension.load(shipped.SHIPPED_DIR / f"{name}.json")
        ext.check_monotone()
        assert {"model", "rope_theta", "rotary_dim"} <= set(ext.metadata), name
        assert ext.metadata["rotary_dim"] == 2 * ext.half_dim
        # below the native length the shipped factors leave the model unchanged
        assert ext.short_factor is not None and all(v == 1.0 for v in ext.short_factor), name
        assert ext.short_attention_factor == 1.0, name  # the long attention factor applies past it only


def test_name_resolves_to_the_shipped_file(shipped_dir):
    want = write_factors(shipped_dir, "tiny-test-2x")
    ext = load_factors("tiny-test-2x")
    assert ext.long_factor == want.long_factor and ext.metadata["label"] == "tiny-test-2x"
    with pytest.raises(UsageError, match="not the name of shipped factors .shipped: tiny-test-2x"):
        load_factors("tiny-test-4x")


def test_factors_for_another_model_are_refused(shipped_dir):
    write_factors(shipped_dir, "other-base", base=500000.0)
    write_factors(shipped_dir, "other-dim", half=4)
    with pytest.raises(UsageError, match="rope base 500000 .made for tiny-test.; this model.s base is 10000"):
        load_factors("other-base").check_fits(TINY)
    with pytest.raises(UsageError, match="do not fit this model .made for tiny-test.: they hold 4 values"):
        load_factors("other-dim").check_fits(TINY)
    write_factors(shipped_dir, "fits")
    assert shipped.shipped_for(TINY) == ["fits"]


def test_cli_uses_and_lists_shipped_factors(shipped_dir, tiny_model_dir, tiny_corpus, tmp_path, capsys):
    write_factors(shipped_dir, "tiny-test-2x")
    write_factors(shipped_dir, "other-base", base=500000.0)
    assert main(["info", "--model", str(tiny_model_dir)]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("shipped_factors")]
    assert line and line[0].split()[-1] == "tiny-test-2x"
    out = tmp_path / "eval"
    argv = ["eval-ppl", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--split", "all", "--docs", "1",
            "--lengths", "64", "--methods", "none", "--dtype", "fp32", "--out", str(out)]
    assert main([*argv, "--factors", "tiny-test-2x"]) == 0
    capsys.readouterr()
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"none", "tiny-test-2x"}
    for name, msg in (("no-such-factors", "not the name of shipped factors"), ("other-base", "rope base 500000")):
        bad = tmp_path / f"bad-{name}"
        assert main([*argv[:-1], str(bad), "--factors", name]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err, err
        assert not (bad / "results.json").exists()
