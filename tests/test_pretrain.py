"""The tiny reference model: tokenizer, batches, schedule, and a few-step run end to end."""
import json
from dataclasses import replace

import pytest
import torch

from longrope.data import load_corpus
from longrope.errors import UsageError
from longrope.train.pretrain import Batches, PretrainConfig, pretrain_tiny, train_tokenizer
from longrope.train.toolkit import lr_at, next_token_loss


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A dozen real stdlib documents as a .txt directory (seconds to tokenize and train on)."""
    root = tmp_path_factory.mktemp("corpus")
    docs = [d for d in load_corpus() if 4000 < len(d.text) < 12000][:12]
    for i, d in enumerate(docs):
        (root / f"{i:02d}.txt").write_text(d.text)
    return root


def test_tokenizer_splits_digits_and_adds_bos():
    tok = train_tokenizer(["x = 1234567 + 89\nThe pass key is 42. " * 50], vocab_size=300)
    ids = tok("key 31415").input_ids
    assert ids[0] == tok.bos_token_id
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[-5:] == ["3", "1", "4", "1", "5"]
    assert tok.decode(tok(" 31415", add_special_tokens=False).input_ids) == " 31415"
    assert tok.eos_token_id is not None and tok.pad_token_id is not None


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = PretrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_batches_start_with_bos_and_mask_passkey_padding():
    tok = train_tokenizer(["The grass is green. The pass key is 123. " * 40, "def f():\n    pass\n" * 40], 400)
    stream = torch.tensor(tok("def g(x):\n    return x\n" * 100).input_ids)
    cfg = PretrainConfig(block_size=512, batch_size=16, passkey_fraction=0.5)
    x, y, w = Batches(stream, tok, cfg, seed=0).next()
    assert x.shape == y.shape == w.shape == (16, 512)
    assert (w == 1).all()  # --answer-weight 1
    assert (x[:, 0] == tok.bos_token_id).all()
    assert torch.equal(x[:, 1:][y[:, :-1] != -100], y[:, :-1][y[:, :-1] != -100])  # y is x shifted by one
    masked = (y == -100).any(dim=1)
    assert 0 < masked.sum() < 16  # some rows are padded passkey prompts, some corpus windows
    x2, y2, _ = Batches(stream, tok, cfg, seed=0).next()
    assert torch.equal(x, x2) and torch.equal(y, y2)  # seeded


@pytest.mark.parametrize("reach, longest", [(0.5, 32), (0.9, 57)])
def test_copy_rows_repeat_a_corpus_span(reach, longest):
    tok = train_tokenizer(["def f(x):\n    return x + 1\n" * 40], 320)
    stream = torch.arange(10, 1010)  # distinct ids: a repeat can only come from the copy
    cfg = PretrainConfig(block_size=64, batch_size=32, passkey_fraction=0.0, copy_fraction=1.0, copy_reach=reach)
    x, y, w = Batches(stream, tok, cfg, seed=0).next()
    assert (x[:, 0] == tok.bos_token_id).all() and (y != -100).all() and (w == 1).all()
    spans = []
    for row in torch.cat([x, y[:, -1:]], dim=1)[:, 1:]:  # the 64 tokens after BOS
        k = int((row == row[0]).nonzero()[1])  # the span length: where the first token comes back
        spans.append(k)
        assert 8 <= k <= longest and torch.equal(row[k:], row[:-k])
        assert torch.equal(row[1:k] - row[:k - 1], torch.ones(k - 1, dtype=row.dtype))  # a window of the stream
    assert max(spans) > longest * 0.75  # the reach is used, not only short spans


def test_answer_weight_lands_on_the_passkey_answer_and_weights_the_loss():
    tok = train_tokenizer(["The grass is green. The pass key is 123. " * 40, "def f():\n    pass\n" * 40], 400)
    stream = torch.tensor(tok("def g(x):\n    return x\n" * 100).input_ids)
    cfg = PretrainConfig(block_size=256, batch_size=8, passkey_fraction=1.0, answer_weight=5.0)
    batches = Batches(stream, tok, cfg, seed=0)
    x, y, w = batches.next()
    for row_x, row_y, row_w in zip(x, y, w):
        heavy = (row_w == 5.0).nonzero().flatten()
        assert len(heavy) > 0 and torch.equal(heavy, torch.arange(int(heavy[0]), int(heavy[-1]) + 1))
        answer = tok.decode(row_y[heavy])
        assert answer.strip().isdigit()  # the weighted targets are exactly the key's digits
        question_end = tok.decode(row_x[: int(heavy[0]) + 1])
        assert question_end.rstrip().endswith("The pass key is") and answer.strip() in question_end
        assert (row_w[row_w != 5.0] == 1).all() and row_y[int(heavy[-1]) + 1] == tok.eos_token_id
    # the loss is the weighted mean over the targets that are not ignored
    logits = torch.randn(8, 256, len(tok))
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none")
    keep = (y.flatten() != -100).float()
    expected = (ce * w.flatten() * keep).sum() / (w.flatten() * keep).sum()
    assert next_token_loss(logits, y, w).item() == pytest.approx(expected.item(), rel=1e-6)
    unweighted = next_token_loss(logits, y).item()
    assert next_token_loss(logits, y, torch.ones_like(w)).item() == pytest.approx(unweighted, rel=1e-6)


def test_few_step_pretrain_saves_a_loadable_model(tmp_path, small_corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = PretrainConfig.smoke()
    out = pretrain_tiny(tmp_path / "tiny", corpus=str(small_corpus), config=cfg, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders left
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.max_position_embeddings == cfg.block_size
    from longrope.seam import rotary_spec_from_config

    spec = rotary_spec_from_config(model.config)
    assert spec.dim == cfg.head_dim and spec.base == cfg.rope_theta and spec.original_max_position_embeddings == 64
    ids = torch.tensor([tok("def f(x): return 12").input_ids])
    assert ids[0, 0] == tok.bos_token_id
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 5 and record["seed"] == 0 and record["config"]["block_size"] == 64
    assert record["held_out_split"] == "test" and record["final_loss"] > 0
    assert record["eval"]["heldout_ppl_64"] > 1

    with pytest.raises(UsageError, match="not empty"):
        pretrain_tiny(out, corpus=str(small_corpus), config=cfg, progress=False)
    again = pretrain_tiny(out, corpus=str(small_corpus), config=cfg, progress=False, overwrite=True, seed=1)
    assert json.loads((again / "training.json").read_text())["seed"] == 1


def test_pretrain_command(tmp_path, small_corpus, capsys):
    from longrope.cli import main

    args = ["pretrain", "--out", str(tmp_path / "m"), "--steps", "2", "--batch-size", "2", "--corpus",
            str(small_corpus), "--vocab-size", "320", "--layers", "1", "--passkey-trials", "0", "--quiet"]
    assert main(args) == 0
    assert "saved" in capsys.readouterr().out
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert main(args) == 2  # the folder is not empty now
    assert "not empty" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "n"), "--corpus", str(tmp_path / "nope")]) == 2
    assert main(["pretrain", "--out", str(tmp_path / "n"), "--steps", "0", "--corpus", str(small_corpus)]) == 2


def test_a_loss_that_stops_being_finite_stops_pretraining_with_one_line(tmp_path, small_corpus, capsys, monkeypatch):
    import longrope.train.pretrain as pt
    from longrope.cli import main

    from helpers import one_line_error

    real = pt._train_step

    def step(model, opt, batches, cfg_, i, *rest):
        loss = real(model, opt, batches, cfg_, i, *rest)
        return float("nan") if i == 2 else loss

    monkeypatch.setattr(pt, "_train_step", step)
    out = tmp_path / "m"
    code = main(["pretrain", "--out", str(out), "--steps", "4", "--batch-size", "2", "--corpus", str(small_corpus),
                 "--vocab-size", "320", "--layers", "1", "--passkey-trials", "0", "--quiet"])
    one_line_error(capsys, code, "diverged at step 2: loss nan")
    assert not out.exists() and not (tmp_path / "m.checkpoints").exists()  # a diverged model is never saved


def test_the_help_s_flags_for_the_tiny_preset_make_its_config():
    """`longrope pretrain --help` spells out the tiny preset's flags; they must build pretrain.TINY."""
    import re

    from longrope.cli import build_parser
    from longrope.options import build
    from longrope.train.pretrain import TINY, PretrainConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["pretrain"]
    flags = re.search(r"the tiny preset is (.*?) \(", " ".join(sub.description.split())).group(1).split()
    args = parser.parse_args(["pretrain", *flags])
    cfg = build(PretrainConfig, args, min_lr=args.lr / 10)
    want = PretrainConfig(**TINY)
    assert cfg.min_lr == pytest.approx(want.min_lr)  # lr / 10 from the command line: 3e-4 up to rounding
    assert replace(cfg, min_lr=want.min_lr) == want


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path, small_corpus, monkeypatch, capsys):
    """Ctrl-C mid-run leaves a checkpoint of every finished step; the resumed run ends with the
    weights of an uninterrupted one, and its checkpoints are removed once the model is written."""
    import os
    import signal

    from safetensors.torch import load_file

    import longrope.train.pretrain as pt

    cfg = PretrainConfig.smoke(steps=12)
    full = pretrain_tiny(tmp_path / "full", corpus=str(small_corpus), config=cfg, progress=False)
    real, calls = pt._train_step, []

    def step(model, opt, batches, cfg_, i, *rest):
        loss = real(model, opt, batches, cfg_, i, *rest)
        calls.append(i)
        if i == 6 and len(calls) == 7:
            os.kill(os.getpid(), signal.SIGINT)  # after the step's update, before it is counted
        return loss

    monkeypatch.setattr(pt, "_train_step", step)
    ckpt = tmp_path / "part.checkpoints"
    with pytest.raises(KeyboardInterrupt):
        pretrain_tiny(tmp_path / "part", corpus=str(small_corpus), config=cfg, checkpoints=ckpt)
    assert "interrupted: step 7 is saved" in capsys.readouterr().err
    assert not (tmp_path / "part").exists() and [p.name for p in ckpt.iterdir()] == ["step-000007"]
    with pytest.raises(UsageError, match="holds an interrupted run: continue it with --resume"):
        pretrain_tiny(tmp_path / "part", corpus=str(small_corpus), config=cfg, checkpoints=ckpt)
    with pytest.raises(UsageError, match=r"other settings \(config.lr\)"):
        pretrain_tiny(tmp_path / "part", corpus=str(small_corpus), config=replace(cfg, lr=1e-3), checkpoints=ckpt,
                      resume=True)
    part = pretrain_tiny(tmp_path / "part", corpus=str(small_corpus), config=cfg, checkpoints=ckpt, resume=True,
                         progress=False)
    assert calls == list(range(12)) and not ckpt.exists()
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((part / "training.json").read_text())
    assert record["final_loss"] == json.loads((full / "training.json").read_text())["final_loss"]


def test_a_preset_build_discards_a_checkpoint_it_cannot_continue(tmp_path, small_corpus):
    from longrope.train.pretrain import Saves

    cfg = PretrainConfig.smoke(steps=4, corpus=str(small_corpus))
    tok = train_tokenizer(["def f(x): return x"] * 20, 300)
    Saves(tmp_path / "c", replace(cfg, lr=1e-3), tok, False, restart=True).save(2, {"losses": [1.0, 1.0]})
    assert Saves(tmp_path / "c", cfg, tok, False, restart=True).load() is None and not (tmp_path / "c").exists()
    same = Saves(tmp_path / "c", cfg, tok, False, restart=True)
    same.save(2, {"losses": [1.0, 1.0]})
    assert same.load() == {"losses": [1.0, 1.0]}  # a matching one is continued
    (tmp_path / "c" / "step-000002" / "trainer_state.json").write_text("{not json")
    assert same.load() is None and not (tmp_path / "c").exists()  # a damaged one is dropped
    same.save(2, {"losses": [1.0, 1.0]})
    (tmp_path / "c" / "step-000002" / "trainer_state.json").write_text("{not json")
    with pytest.raises(UsageError, match="trainer_state.json is unreadable"):  # `pretrain --resume` says so
        Saves(tmp_path / "c", cfg, tok, False, restart=False).load()


def test_a_second_ctrl_c_keeps_the_last_periodic_checkpoint(tmp_path, small_corpus, monkeypatch, capsys):
    import os
    import signal

    from safetensors.torch import load_file

    import longrope.train.pretrain as pt

    cfg = PretrainConfig.smoke(steps=12)
    full = pretrain_tiny(tmp_path / "full", corpus=str(small_corpus), config=cfg, progress=False)
    monkeypatch.setattr(pt.Saves.__init__, "__defaults__", (5,) + pt.Saves.__init__.__defaults__[1:])  # every 5
    real = pt._train_step

    def step(model, opt, batches, cfg_, i, *rest):
        loss = real(model, opt, batches, cfg_, i, *rest)
        if i == 7:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the second stops at once, mid-step
        return loss

    monkeypatch.setattr(pt, "_train_step", step)
    ckpt = tmp_path / "part.checkpoints"
    with pytest.raises(KeyboardInterrupt):
        pretrain_tiny(tmp_path / "part", corpus=str(small_corpus), config=cfg, checkpoints=ckpt, progress=False)
    assert "interrupted mid-step: step 5 is saved" in capsys.readouterr().err  # said even without progress
    assert [p.name for p in ckpt.iterdir()] == ["step-000005"]
    monkeypatch.setattr(pt, "_train_step", real)
    part = pretrain_tiny(tmp_path / "part", corpus=str(small_corpus), config=cfg, checkpoints=ckpt, resume=True,
                         progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and not ckpt.exists()
