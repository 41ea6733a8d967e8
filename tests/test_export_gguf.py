"""`longrope export --format gguf` on small GGUF files written here with gguf.GGUFWriter:
every source key and tensor survives unchanged, and llama.cpp's longrope keys and factor
tensors hold the extension."""
import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from longrope.cli import main  # noqa: E402
from longrope.export.gguf import GGUF_NAME, read_gguf_rope  # noqa: E402
from longrope.export.hf import SIDECAR  # noqa: E402
from longrope.factors import RopeExtension  # noqa: E402
from longrope.methods import attention_factor  # noqa: E402

L, TARGET, HALF = 32, 256, 8  # native context, target, d/2 (head dim 16)


def write_gguf(path, arch="llama", extra_keys=None, extra_tensors=None):
    """A tiny but well-formed GGUF: hyper-parameters, a vocabulary, F32/F16/Q8_0 tensors."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name("tiny")
    w.add_context_length(L)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(2 * HALF)
    w.add_rope_freq_base(10000.0)
    w.add_token_list([f"t{i}" for i in range(97)])
    w.add_token_scores([float(i) for i in range(97)])
    for key, (value, vtype) in (extra_keys or {}).items():
        w.add_key_value(key, value, vtype)
    w.add_tensor("token_embd.weight", rng.standard_normal((97, 64)).astype(np.float32))
    w.add_tensor("output_norm.weight", rng.standard_normal(64).astype(np.float16))
    q = gguf.quants.quantize(rng.standard_normal((64, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    for name, values in (extra_tensors or {}).items():
        w.add_tensor(name, values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def extension(**changes) -> RopeExtension:
    long = [1.0 + 0.9 * i for i in range(HALF)]
    ext = RopeExtension("longrope", long, L, TARGET, short_factor=[1.0 + 0.01 * i for i in range(HALF)])
    return ext.with_(**changes)


def export(tmp_path, src, ext, name="out", *extra):
    factors = tmp_path / f"{name}.json"
    ext.save(factors)
    return main(["export", "--format", "gguf", "--model", str(src), "--factors", str(factors),
                 "--out", str(tmp_path / name), *extra])


def field(reader, key):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def test_gguf_export_copies_everything_and_adds_longrope(tmp_path):
    src = write_gguf(tmp_path / "src.gguf")
    ext = extension()
    assert export(tmp_path, src, ext) == 0
    a, b = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(tmp_path / "out" / GGUF_NAME))

    assert field(b, "llama.rope.scaling.type") == "longrope"
    assert field(b, "llama.rope.scaling.original_context_length") == L
    assert field(b, "llama.context_length") == TARGET
    assert field(b, "llama.rope.scaling.attn_factor") == pytest.approx(attention_factor(ext), rel=1e-6)
    assert field(b, "llama.rope.scaling.factor") is None  # it would rescale positions on top of the factors
    for f in a.fields.values():
        if f.name.startswith("GGUF.") or f.name == "llama.context_length":
            continue
        assert field(b, f.name) == f.contents() and b.get_field(f.name).types == f.types, f.name

    tensors = {t.name: t for t in b.tensors}
    for t in a.tensors:
        u = tensors[t.name]
        assert u.tensor_type == t.tensor_type and list(u.shape) == list(t.shape)
        assert np.asarray(u.data).tobytes() == np.asarray(t.data).tobytes(), t.name
    for name, want in (("rope_factors_long.weight", ext.long_factor), ("rope_factors_short.weight", ext.short_factor)):
        t = tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [HALF]
        np.testing.assert_array_equal(np.asarray(t.data), np.asarray(want, dtype=np.float32))
    assert len(b.tensors) == len(a.tensors) + 2

    sidecar = json.loads((tmp_path / "out" / SIDECAR).read_text())
    assert sidecar["format"] == "gguf" and sidecar["checks"]["tensors_checked"] == len(b.tensors)
    rope = read_gguf_rope(b)  # re-exporting the result sees its native context, not the target
    assert rope.scaling_type == "longrope" and rope.spec.original_max_position_embeddings == L


def test_gguf_without_short_factor_writes_long_twice(tmp_path):
    src = write_gguf(tmp_path / "src.gguf")
    ext = extension(short_factor=None)
    assert export(tmp_path, src, ext) == 0
    b = gguf.GGUFReader(str(tmp_path / "out" / GGUF_NAME))
    tensors = {t.name: np.asarray(t.data) for t in b.tensors}
    np.testing.assert_array_equal(tensors["rope_factors_short.weight"], tensors["rope_factors_long.weight"])


def test_gguf_refusals(tmp_path, capsys):
    src = write_gguf(tmp_path / "src.gguf")
    qwen = write_gguf(tmp_path / "qwen.gguf", arch="qwen2")
    freqs = write_gguf(tmp_path / "freqs.gguf", extra_tensors={"rope_freqs.weight": np.ones(HALF, np.float32)})
    cases = [
        (src, extension(long_factor=[1.0, 2.0], short_factor=None), "takes 8"),
        (src, extension(original_max_position_embeddings=64), "native context"),
        (qwen, extension(), "qwen2"),
        (freqs, extension(), "already rescales"),
        (tmp_path / "missing.gguf", extension(), "not found"),
        (tmp_path, extension(), "needs a GGUF model"),  # an HF directory: no converter in the gguf package
        (src, extension(start_token=2), "--drop-start-token"),
    ]
    for i, (model, ext, message) in enumerate(cases):
        capsys.readouterr()
        assert export(tmp_path, model, ext, f"bad{i}") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (message, err)
        assert not (tmp_path / f"bad{i}").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
