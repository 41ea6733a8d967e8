"""The perplexity evaluator against the plain transformers loss, and its sliding-window mode."""
import pytest
import torch
import torch.nn.functional as F

from longrope.evaluate.ppl import document_nll, sequence_nll, sliding_window_nll


def reference_nll(model, ids):
    """Summed NLL from full [T, V] logits, the way `model(labels=...)` computes it."""
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, :-1].float()
    return float(F.cross_entropy(logits, ids[1:], reduction="sum"))


def test_chunked_loss_equals_full_logits_loss(make_tiny_model):
    model = make_tiny_model("llama")
    ids = torch.randint(0, 97, (70,), generator=torch.Generator().manual_seed(0))
    nll, n = document_nll(model, ids, chunk_size=16)  # 69 targets: 5 chunks, the last one short
    assert n == 69
    assert nll == pytest.approx(reference_nll(model, ids), rel=1e-5)
    with torch.no_grad():
        loss = model(input_ids=ids[None], labels=ids[None]).loss
    assert nll / n == pytest.approx(float(loss), rel=1e-5)


def test_batched_rows_equal_single_rows(make_tiny_model):
    model = make_tiny_model("qwen2")
    ids = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(1))
    batched = sequence_nll(model, ids, chunk_size=7)
    singles = torch.stack([sequence_nll(model, row[None], chunk_size=64)[0] for row in ids])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-4)


def test_sliding_window_scores_every_token_once(make_tiny_model):
    model = make_tiny_model("llama")
    ids = torch.randint(0, 97, (100,), generator=torch.Generator().manual_seed(2))
    # a window covering the whole document is one plain pass
    whole, n = sliding_window_nll(model, ids, window=128, stride=64)
    assert n == 99 and whole == pytest.approx(document_nll(model, ids)[0], rel=1e-5)
    # stride == window: independent consecutive windows
    nll, n = sliding_window_nll(model, ids, window=25, stride=25)
    expected = sum(reference_nll(model, ids[s : s + 25]) for s in range(0, 100, 25))
    assert n == 96 and nll == pytest.approx(expected, rel=1e-5)  # token 0 of each window has no target
    # overlapping windows: target t is scored in the first window that reaches past it
    window, stride = 40, 16
    nll, n = sliding_window_nll(model, ids, window=window, stride=stride)
    assert n == 99
    expected = 0.0
    with torch.no_grad():
        for t in range(1, 100):
            begin = next(b for b in range(0, 100, stride) if min(b + window, 100) > t)
            lp = model(input_ids=ids[None, begin : t + 1]).logits[0, -2].float().log_softmax(-1)
            expected -= float(lp[ids[t]])
    assert nll == pytest.approx(expected, rel=1e-4)


def test_band_nll_equals_hand_computed_full_logit_loss_per_band(make_tiny_model):
    from longrope.evaluate.ppl import band_mean_nlls, band_nll, position_bands

    model = make_tiny_model("llama")  # native context 32
    ids = torch.randint(0, 97, (2, 150), generator=torch.Generator().manual_seed(3))
    edges = position_bands(150, 32)
    assert edges == [0, 32, 64, 128, 150]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()  # [2, 149, V]: logits[:, t] predicts token t + 1
    token_nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [2, 149]
    expected = torch.stack([token_nll[:, max(lo, 1) - 1 : hi - 1].sum(dim=1) for lo, hi in zip(edges, edges[1:])], 1)
    got = band_nll(model, ids, edges, chunk_size=20)  # chunks straddle the band edges
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert got.sum(dim=1).tolist() == pytest.approx(sequence_nll(model, ids).tolist(), rel=1e-5)
    # tokens past the last edge are not counted
    torch.testing.assert_close(band_nll(model, ids, [0, 32, 64], chunk_size=7), expected[:, :2], rtol=1e-5, atol=1e-4)
    means, counts = band_mean_nlls(model, list(ids), 150, edges, chunk_size=64)
    assert counts == [31, 32, 64, 22]
    assert means[1] == pytest.approx((expected[1] / torch.tensor(counts)).tolist(), rel=1e-5)


def test_ppl_figures_by_position(make_tiny_model):
    import math

    from longrope.evaluate.runner import ppl_figures

    model = make_tiny_model("llama")
    docs = list(torch.randint(0, 97, (3, 100), generator=torch.Generator().manual_seed(4)))
    seen = []  # progress within the cell: one call per document
    plain = ppl_figures(model, docs, 100, progress=lambda done, total: seen.append((done, total)))
    banded = ppl_figures(model, docs, 100, native=32, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)] * 2
    assert banded["ppl"] == pytest.approx(plain["ppl"], rel=1e-5) and banded["tokens"] == plain["tokens"] == 297
    assert [(b["start"], b["end"], b["tokens"]) for b in banded["bands"]] == [(0, 32, 93), (32, 64, 96), (64, 100, 108)]
    with torch.no_grad():
        logits = torch.stack([model(input_ids=d[None]).logits[0, :-1].float() for d in docs])
    nll = F.cross_entropy(logits.transpose(1, 2), torch.stack(docs)[:, 1:], reduction="none")  # [3, 99]
    assert banded["bands"][2]["ppl"] == pytest.approx(math.exp(float(nll[:, 63:].mean())), rel=1e-5)


def test_runner_shows_progress_within_a_cell(make_tiny_model, capsys):
    """A cell of long-context trials can take minutes: the bar moves with each document or trial."""
    from types import SimpleNamespace

    from longrope.evaluate.runner import Variant, run_cells

    def cell(lm, variant, length, progress):
        for i in range(3):
            progress(i + 1, 3)
        return {"length": length}

    shared = SimpleNamespace(model=make_tiny_model("llama"))
    cells = run_cells([Variant("none", None)], [16, 32], {"ppl": cell}, shared, desc="test")
    assert list(cells) == [("none", "ppl", 16), ("none", "ppl", 32)]
    err = capsys.readouterr().err
    assert "done=1/3" in err and "done=3/3" in err and "length=32" in err
