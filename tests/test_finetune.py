"""Fine-tuning at the extended length: loss goes down, the output loads with its factors,
resume repeats an uninterrupted run exactly, mixed context window, bad input."""
import json

import pytest
import torch

from longrope.cli import main
from longrope.factors import RopeExtension
from longrope.train.finetune import FinetuneConfig, PackedBatches, finetune
from longrope.train.toolkit import lr_at


def pi_extension(length: int, native: int = 32, half: int = 8, start_token: int = 0) -> RopeExtension:
    s = length / native
    return RopeExtension(method="pi", long_factor=[s] * half, original_max_position_embeddings=native,
                         max_position_embeddings=length, start_token=start_token, attention_factor=1.0)


def small_config(**overrides) -> FinetuneConfig:
    base = dict(length=64, steps=6, batch_size=2, grad_accum=2, lr=3e-3, warmup_steps=1,
                mixed_precision="no", split_seed=0)
    return FinetuneConfig(**{**base, **overrides})


def test_schedule_warmup_then_decay():
    cfg = FinetuneConfig(length=8, steps=10, lr=1.0, warmup_steps=2, schedule="linear")
    lrs = [lr_at(s, cfg) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0] and lrs[2] == 1.0 and all(a > b for a, b in zip(lrs[2:], lrs[3:]))
    cos = FinetuneConfig(length=8, steps=10, lr=1.0, warmup_steps=0, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, cos) == pytest.approx(1.0) and lr_at(10, cos) == pytest.approx(0.1)


def test_packed_batches_deterministic_and_bos_eos(tiny_model_dir, tiny_corpus):
    from transformers import AutoTokenizer

    from longrope.train.finetune import packed_stream

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    stream = packed_stream(tok, str(tiny_corpus))
    assert (stream == tok.bos_token_id).sum() == (stream == tok.eos_token_id).sum() > 0
    cfg = small_config(mixed_context=0.5, passkey_fraction=0.3)
    a, b = PackedBatches(stream, tok, cfg, native=32), PackedBatches(stream, tok, cfg, native=32)
    kinds = set()
    for m in (5, 0, 3, 5, 1, 2, 4, 6, 7, 8):
        xa, ya, wa, la = a.micro_batch(m)
        xb, yb, wb, lb = b.micro_batch(m)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and la == lb and wa is wb is None
        kinds.add(la)
        assert xa.shape == ((2, 64) if la else (4, 32))  # same tokens per micro-batch either way
    assert kinds == {True, False}


def test_passkey_rows_weigh_exactly_the_answer(tiny_model_dir, tiny_corpus):
    from transformers import AutoTokenizer

    from longrope.evaluate.passkey import first_integer
    from longrope.train.finetune import packed_stream

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    cfg = small_config(length=1024, passkey_fraction=1.0, answer_weight=7.0)  # a quarter fits any prompt
    batches = PackedBatches(packed_stream(tok, str(tiny_corpus)), tok, cfg, native=32)
    rows = 0
    for m in range(4):
        x, y, w, _ = batches.micro_batch(m)
        for xi, yi, wi in zip(x, y, w):
            heavy = (wi == 7.0).nonzero().flatten()
            assert len(heavy) and set(wi.unique().tolist()) == {1.0, 7.0}
            assert torch.equal(heavy, torch.arange(int(heavy[0]), int(heavy[-1]) + 1))  # one contiguous span
            answer = yi[heavy]
            assert answer[-1] == tok.eos_token_id and (yi[int(heavy[-1]) + 1 :] == -100).all()
            key = first_integer(tok.decode(answer[:-1]))
            assert key is not None and f"{key}" in tok.decode(xi[: int(heavy[0]) + 1])  # the needle holds the key
            rows += 1
    assert rows == 8
    digits = PackedBatches(packed_stream(tok, str(tiny_corpus)), tok,
                           small_config(length=1024, passkey_fraction=1.0, answer_weight=7.0, weigh_eos=False), native=32)
    _, y2, w2, _ = digits.micro_batch(0)
    for yi, wi in zip(y2, w2):
        heavy = (wi == 7.0).nonzero().flatten()
        assert len(heavy) and yi[int(heavy[-1]) + 1] == tok.eos_token_id  # the EOS right after weighs 1
        assert wi[int(heavy[-1]) + 1] == 1.0 and tok.eos_token_id not in yi[heavy]


def test_passkey_row_lengths_upper_or_log(tiny_model_dir, tiny_corpus):
    """upper: prompts in [N/4, N]; log: from the native length up, as many per octave, so the
    long factors are trained at every scale (a 64x model otherwise never sees a 2x prompt).
    Prompts come out up to one filler sentence (~70 tokens here) below their target length."""
    from transformers import AutoTokenizer

    from longrope.train.finetune import packed_stream

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    stream = packed_stream(tok, str(tiny_corpus))
    ends = {}
    for how in ("upper", "log", "mix"):
        cfg = small_config(length=4096, batch_size=1, passkey_fraction=1.0, answer_weight=7.0, passkey_lengths=how)
        batches = PackedBatches(stream, tok, cfg, native=256)
        ends[how] = [int((w[0] == 7.0).nonzero()[-1]) + 1 for w in (batches.micro_batch(m)[2] for m in range(48))]
    assert 4096 // 4 - 80 <= min(ends["upper"]) and max(ends["upper"]) <= 4096
    assert 256 - 80 <= min(ends["log"]) and max(ends["log"]) <= 4096
    octaves = [sum(lo - 80 <= e < 2 * lo - 80 for e in ends["log"]) for lo in (256, 512, 1024, 2048)]
    assert all(n >= 5 for n in octaves), octaves  # 12 expected in each
    below = sum(e < 4096 // 4 - 80 for e in ends["mix"])  # log rows under N/4: 3/8 of the rows expected
    assert 6 <= below <= 30, below


def test_micro_batches_end_at_their_last_target(tiny_model_dir, tiny_corpus):
    """Padding after the longest row's last target is cut (causal attention: no loss changes),
    but a long micro-batch keeps more than the native length, so the long factors still apply."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from longrope.train.finetune import packed_stream
    from longrope.train.toolkit import next_token_loss

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    stream = packed_stream(tok, str(tiny_corpus))
    cfg = small_config(length=1024, batch_size=2, passkey_fraction=1.0, answer_weight=5.0, passkey_lengths="log")
    batches = PackedBatches(stream, tok, cfg, native=32)
    widths = []
    for m in range(6):
        x, y, w, long = batches.micro_batch(m)
        last = max(int((row != -100).nonzero()[-1]) for row in y)
        assert long and x.shape == y.shape == w.shape and x.shape[1] == max(last + 1, 33)
        widths.append(x.shape[1])
        pad = torch.full((2, 1024 - x.shape[1]), tok.eos_token_id)
        xp, yp = torch.cat([x, pad], 1), torch.cat([y, torch.full_like(pad, -100)], 1)
        wp = torch.cat([w, torch.ones(pad.shape)], 1)
        with torch.no_grad():
            cut, full = (next_token_loss(model(input_ids=a).logits, b, c) for a, b, c in ((x, y, w), (xp, yp, wp)))
        assert torch.allclose(cut, full, rtol=1e-5, atol=1e-6)
    assert min(widths) < 1024  # log-uniform prompts: some micro-batches are short
    upper = PackedBatches(stream, tok, small_config(length=1024, batch_size=1, passkey_fraction=1.0), native=900)
    floored = [b for b in map(upper.micro_batch, range(12)) if int((b[1][0] != -100).nonzero()[-1]) < 900]
    assert floored and all(b[0].shape[1] == 901 for b in floored)  # prompts under the native length: kept to 901


def test_finetune_reduces_loss_and_writes_loadable_dir(tiny_model_dir, tiny_corpus, tmp_path):
    from longrope.factors import FACTORS_FILE
    from longrope.models.load import load_model
    from longrope.seam import ScaledRotaryEmbedding

    ext = pi_extension(64, start_token=4)
    out = tmp_path / "ft"
    result = finetune(str(tiny_model_dir), ext, out, small_config(steps=8, corpus=str(tiny_corpus)), progress=False)
    assert result.losses[-1] < result.losses[0]
    record = json.loads((out / "finetune.json").read_text())
    assert record["losses"] == result.losses and "start token" in " ".join(record["notes"])
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "longrope"
    assert config["max_position_embeddings"] == 64 and config["original_max_position_embeddings"] == 32
    assert not (out / "checkpoints").exists()
    import stat

    from longrope.atomic import FILE_MODE
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()} == {FILE_MODE}  # none private
    # our loader installs the factors file, start token included
    lm = load_model(str(out), dtype="fp32", device="cpu")
    rope = next(m for m in lm.model.modules() if isinstance(m, ScaledRotaryEmbedding))
    assert rope.extension == RopeExtension.load(out / FACTORS_FILE) and rope.extension.start_token == 4
    assert lm.spec.original_max_position_embeddings == 32
    # plain transformers reads the same factors from config.json
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(out))
    assert plain.config.max_position_embeddings == 64


def test_resume_repeats_the_uninterrupted_run(tiny_model_dir, tiny_corpus, tmp_path):
    from safetensors.torch import load_file

    ext = pi_extension(64)
    cfg = small_config(steps=6, save_every=2, corpus=str(tiny_corpus), passkey_fraction=0.25)
    full = finetune(str(tiny_model_dir), ext, tmp_path / "full", cfg, progress=False)
    part = finetune(str(tiny_model_dir), ext, tmp_path / "part", cfg, stop_after=3, progress=False)
    assert (tmp_path / "part" / "checkpoints" / "step-000003").is_dir()
    import stat

    from longrope.atomic import FILE_MODE
    saved = [p for p in (tmp_path / "part" / "checkpoints" / "step-000003").iterdir() if p.is_file()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in saved} == {FILE_MODE}  # the weights are not private
    assert not (tmp_path / "part" / "finetune.json").exists()
    rest = finetune(str(tiny_model_dir), ext, tmp_path / "part", cfg, resume=True, progress=False)
    assert part.losses + rest.losses[3:] == full.losses
    assert rest.losses == full.losses
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a complete run is left alone
    again = finetune(str(tiny_model_dir), ext, tmp_path / "part", cfg, resume=True, progress=False)
    assert again.skipped and again.losses == full.losses


def test_mixed_context_window(tiny_model_dir, tiny_corpus, tmp_path):
    """LongRoPE2: short micro-batches train with the original RoPE; the model keeps short_factor = 1."""
    from longrope.factors import FACTORS_FILE

    ext = pi_extension(64).with_(attention_factor=1.2)  # magnitude scaling past the native length
    cfg = small_config(steps=4, mixed_context=0.5, corpus=str(tiny_corpus))
    mixed = finetune(str(tiny_model_dir), ext, tmp_path / "mixed", cfg, progress=False)
    plain = finetune(str(tiny_model_dir), ext, tmp_path / "plain", small_config(steps=4, corpus=str(tiny_corpus)),
                     progress=False)
    assert mixed.losses != plain.losses
    saved = RopeExtension.load(tmp_path / "mixed" / FACTORS_FILE)
    assert saved.short_factor == (1.0,) * 8 and saved.long_factor == ext.long_factor
    assert saved.short_attention_factor == 1.0 and saved.attention_factor != 1.0
    # within the native context the saved model is the model under the original RoPE, as trained
    from longrope.models.load import load_model
    from longrope.seam import install_rope

    lm = load_model(str(tmp_path / "mixed"), dtype="fp32", device="cpu")
    x = torch.randint(0, 97, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        as_saved = lm.model(input_ids=x).logits
        install_rope(lm.model, None)
        original = lm.model(input_ids=x).logits
    torch.testing.assert_close(as_saved, original, rtol=0, atol=0)


@pytest.mark.parametrize("argv,msg", [
    (["--length", "128"], "exceeds"),  # the factors cover 64 tokens
    (["--length", "64", "--steps", "0"], "--steps must be >= 1"),
    (["--length", "64", "--mixed-context", "1.5"], "--mixed-context must be < 1"),
    (["--length", "64", "--warmup-steps", "9"], "--warmup-steps 9 exceeds --steps 2"),
    (["--length", "64", "--lr", "inf"], "--lr must be a finite number"),
    (["--length", "64", "--save-every", "-1"], "--save-every must be >= 0"),
    (["--length", "64", "--passkey-lengths", "quarter"], "--passkey-lengths"),
])
def test_bad_input_one_line_exit_2_nothing_written(argv, msg, tiny_model_dir, tmp_path, capsys):
    factors = tmp_path / "f.json"
    pi_extension(64).save(factors)
    out = tmp_path / "out"
    args = ["finetune", "--model", str(tiny_model_dir), "--factors", str(factors), "--out", str(out), "--steps", "2"]
    code = main(args + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and "\n" not in err, err
    assert not out.exists()


def test_cli_finetune_end_to_end(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    factors = tmp_path / "f.json"
    pi_extension(64).save(factors)
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(tiny_model_dir), "--factors", str(factors), "--out", str(out),
            "--length", "64", "--steps", "2", "--corpus", str(tiny_corpus), "--mixed-precision", "no"]
    assert main(argv) == 0
    assert (out / "finetune.json").is_file() and (out / "longrope_factors.json").is_file()
    assert main(argv) == 2  # not empty without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
