import json

import pytest

from longrope.errors import UsageError
from longrope.factors import JSON_KEYS, RopeExtension


def ext(**kw):
    base = dict(method="longrope", long_factor=[1.0, 2.0, 4.0], original_max_position_embeddings=128,
                max_position_embeddings=1024)
    base.update(kw)
    return RopeExtension(**base)


def test_json_round_trip_has_the_documented_keys(tmp_path):
    e = ext(short_factor=[1.0, 1.1, 1.2], start_token=4, metadata={"seed": 3})
    path = e.save(tmp_path / "f.json")
    d = json.loads(path.read_text())
    assert tuple(d) == JSON_KEYS[:-2]  # short_attention_factor, attention_by_length only when set: older files
    # digest the same
    assert d["attention_factor"] is None and d["start_token"] == 4
    assert RopeExtension.load(path) == e
    assert e.scale == 8.0
    own = e.with_(short_attention_factor=1.0)
    d = json.loads(own.save(tmp_path / "g.json").read_text())
    assert tuple(d) == JSON_KEYS[:-1] and d["short_attention_factor"] == 1.0
    assert RopeExtension.load(tmp_path / "g.json") == own
    grows = own.with_(attention_by_length=True)
    d = json.loads(grows.save(tmp_path / "h.json").read_text())
    assert tuple(d) == JSON_KEYS and d["attention_by_length"] is True
    assert RopeExtension.load(tmp_path / "h.json") == grows


def test_attention_by_length_follows_the_length_in_force_past_the_native_context():
    import math

    from longrope.hf_config import check_exportable
    from longrope.methods import attention_factor_at_length
    from longrope.seam import ScaledRotaryEmbedding
    from longrope.rope import RotarySpec

    e = ext(short_factor=[1.0] * 3, short_attention_factor=1.0, attention_factor=1.17, attention_by_length=True)
    longrope = lambda n: math.sqrt(1 + math.log(n / 128) / math.log(128))  # noqa: E731
    assert attention_factor_at_length(e, 128) == 1.0  # the short factors' own
    for n in (129, 256, 1024, 4096):  # LongRoPE's factor for the scale in force, past the target too
        assert attention_factor_at_length(e, n) == pytest.approx(longrope(n))
    fixed = e.with_(attention_by_length=False)
    assert attention_factor_at_length(fixed, 256) == attention_factor_at_length(fixed, 1024) == 1.17
    rope = ScaledRotaryEmbedding(RotarySpec(6, 10000.0, 128), e)
    assert rope.attention_factor_at(512) == pytest.approx(longrope(512))
    # exports have one long factor: they keep attention_factor and say what differs
    written, notes = check_exportable(e)
    assert not written.attention_by_length and written.attention_factor == 1.17
    assert any("attention_by_length" in n for n in notes)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"long_factor": [1.0, float("nan"), 2.0]}, "not finite"),
        ({"long_factor": [0.5, 1.0, 2.0]}, "below 1"),
        ({"short_factor": [1.0, 1.0]}, "short_factor has 2 values"),
        ({"max_position_embeddings": 128}, "must exceed"),
        ({"start_token": -1}, "start_token"),
        ({"attention_factor": 0.0}, "attention_factor"),
        ({"short_factor": [1.0] * 3, "short_attention_factor": -1.0}, "short_attention_factor must be a number in \\(0, 10\\]"),
        ({"short_factor": [1.0] * 3, "short_attention_factor": "1"}, "short_attention_factor must be a number"),
        ({"short_attention_factor": 1.0}, "short_attention_factor needs a short_factor"),
        ({"attention_by_length": "yes"}, "attention_by_length must be true or false"),
    ],
)
def test_invalid_extensions_are_rejected(kw, msg):
    with pytest.raises(UsageError, match=msg):
        ext(**kw)


def test_monotone_check():
    ext().check_monotone()
    with pytest.raises(UsageError, match="non-decreasing"):
        ext(long_factor=[2.0, 1.0, 3.0]).check_monotone()


def test_malformed_files(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        RopeExtension.load(p)
    p.write_text(json.dumps({"method": "x", "long_factor": [1.0]}))
    with pytest.raises(UsageError, match="missing key"):
        RopeExtension.load(p)
    p.write_text(json.dumps({**ext().to_dict(), "extra": 1}))
    with pytest.raises(UsageError, match="unknown key"):
        RopeExtension.load(p)
    with pytest.raises(UsageError, match="not found"):
        RopeExtension.load(tmp_path / "missing.json")
