"""Searches pinned to committed files (tests/data/search_runs): the same seed gives byte-identical
results, and a state.json written by an earlier release resumes to the same result.

- `longrope search` with the GA (exact early rejection, one candidate at a time) and with CMA-ES
  (race rule, 2 candidates per forward pass) on the tiny random Llama of test_search_cli.py: its
  state.json, history.jsonl and factors.json after 1 and 2 generations. From scratch each must
  equal the committed files, and the committed 1-generation state.json resumed to 2 generations
  must equal the committed 2-generation run.
- Both optimizers on synthetic objectives (every variant, both rules, batch rows, no rejection, a
  space small enough for the GA to run out of new genomes and for CMA-ES to reuse scores): a hash
  of each final state.

Model losses are floats of a CPU forward pass, so they are compared where the files were written
(the same torch, transformers, numpy and cmaes versions and CPU capability, one thread); elsewhere
the test is skipped, saying why. To rewrite the files after an intended change of results:
`OMP_NUM_THREADS=1 PYTHONPATH=. python tests/test_search_fixtures.py`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from longrope.cli import main
from longrope.rope import RotarySpec
from longrope.search.genes import SearchSpace, critical_dimension
from longrope.search.loop import OPTIMIZERS, peer_seeds, run_search
from longrope.search.scoring import Scoring
from longrope.search.state import SearchConfig
from longrope.version import __version__

from conftest import make_corpus, make_tiny_model_dir

DATA = Path(__file__).resolve().parent / "data" / "search_runs"
FILES = ("state.json", "history.jsonl", "factors.json")
BUDGET = ["--population", "6", "--parents", "3", "--mutations", "2", "--crossovers", "2", "--docs", "2",
          "--dtype", "fp32", "--target-length", "64"]
RUNS = {  # each exercises its rule: the GA rejects 2 candidates, CMA-ES 1
    "ga": ["--docs", "4"],
    "cma": ["--optimizer", "cma", "--reject", "race", "--race-confidence", "0.5", "--candidates-per-forward", "2"],
}


def platform() -> dict[str, str]:
    """What the float results depend on besides the code."""
    import cmaes
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "cmaes": cmaes.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def _same_platform(*keys: str) -> None:
    recorded = json.loads((DATA / "platform.json").read_text())
    here = platform()
    differ = [f"{k} {recorded[k]} there, {here[k]} here" for k in keys if recorded[k] != here[k]]
    if differ:
        pytest.skip(f"the committed runs were computed elsewhere ({'; '.join(differ)})")


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- `longrope search` on a tiny random model ---------------------------------------------------------
def make_assets(root: Path) -> tuple[Path, Path]:
    return make_tiny_model_dir(root / "model", native=32), make_corpus(root / "corpus.jsonl", n_docs=12, chars=200)


def search(assets, out: Path, name: str, iterations: int, *extra: str) -> None:
    model, corpus = assets
    args = ["search", "--model", str(model), "--corpus", str(corpus), "--out", str(out), *BUDGET, *RUNS[name],
            "--iterations", str(iterations), *extra]
    with one_thread(), contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0


def _placeholders(assets, out: Path) -> dict[str, str]:
    """What differs between machines and checkouts but not between results: value -> placeholder."""
    model, corpus = assets
    state = json.loads((out / "state.json").read_text())
    return {json.dumps(str(model))[1:-1]: "<MODEL>", json.dumps(str(corpus))[1:-1]: "<CORPUS>",
            state["config"]["model_files"]: "<MODEL_FILES>", f'"version": "{__version__}"': '"version": "<VERSION>"'}


def normalized(assets, out: Path) -> dict[str, str]:
    """The run's files with machine-specific values replaced by placeholders."""
    swaps = _placeholders(assets, out)
    files = {}
    for name in FILES:
        text = (out / name).read_text()
        for value, mark in swaps.items():
            text = text.replace(value, mark)
        files[name] = text
    return files


def committed(name: str, generations: int) -> dict[str, str]:
    return {f: (DATA / f"{name}-{generations}" / f).read_text() for f in FILES}


def write_runs(root: Path) -> None:
    """Rewrite tests/data/search_runs from this code (after an intended change of results)."""
    assets = make_assets(root / "assets")
    for name in RUNS:
        for generations in (1, 2):
            out = root / f"{name}-{generations}"
            search(assets, out, name, generations)
            folder = DATA / out.name
            folder.mkdir(parents=True, exist_ok=True)
            for file, text in normalized(assets, out).items():
                (folder / file).write_text(text)
    (DATA / "platform.json").write_text(json.dumps(platform(), indent=2) + "\n")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("fixture_assets"))


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_search_gives_the_committed_files_and_resumes_a_committed_state(assets, tmp_path, name):
    _same_platform("torch", "transformers", "numpy", "cmaes", "cpu")
    for generations in (1, 2):
        search(assets, tmp_path / f"fresh-{generations}", name, generations)
        assert normalized(assets, tmp_path / f"fresh-{generations}") == committed(name, generations), generations

    # the committed 1-generation state.json, as its run left it, continued to 2 generations
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    text = (DATA / f"{name}-1" / "state.json").read_text()
    for value, mark in _placeholders(assets, tmp_path / "fresh-1").items():
        text = text.replace(mark, value)
    (resumed / "state.json").write_text(text)
    search(assets, resumed, name, 2, "--resume")
    assert normalized(assets, resumed) == committed(name, 2)
    history = [json.loads(line) for line in committed(name, 2)["history.jsonl"].splitlines()]
    assert any(h["rejected"] for h in history)  # the run exercises early rejection


# -- synthetic objectives ----------------------------------------------------------------------------
SPEC = RotarySpec(dim=64, base=10000.0, original_max_position_embeddings=128)


def _quadratic(half: int, scale: float, docs: tuple[float, ...]):
    target = np.linspace(1.0, scale, half)

    def objective(lam: np.ndarray, start_token: int) -> list[float]:
        base = float(np.mean((lam - target) ** 2)) + 0.001 * abs(start_token - 4)
        return [w + base for w in docs]

    return objective


def _noisy(half: int, scale: float, docs: tuple[float, ...], sigma: float = 0.3):
    clean = _quadratic(half, scale, docs)

    def objective(lam: np.ndarray, start_token: int) -> list[float]:
        key = hashlib.sha256(np.asarray(lam, dtype=np.float64).tobytes() + str(start_token).encode()).digest()
        noise = np.random.default_rng(int.from_bytes(key[:8], "little")).normal(0.0, sigma, len(docs))
        return [x + float(e) for x, e in zip(clean(lam, start_token), noise)]

    return objective


class _Rows:
    """A synthetic objective scored `per_forward` candidates at a time (batch rows)."""

    def __init__(self, objective, per_forward: int):
        self.objective, self.candidates_per_forward = objective, per_forward

    def __call__(self, lam, start):
        return self.objective(lam, start)

    def losses(self, rows):
        return [self.objective(lam, start)[doc] for lam, start, doc in rows]


DOCS = (1.0, 3.0, 0.5, 2.0)
SYNTHETIC = {  # name -> (space, config, objective, documents)
    "exact": ({}, {}, lambda: _quadratic(32, 8.0, DOCS)),
    "race": ({}, {"reject": "race", "race_confidence": 0.9}, lambda: _noisy(32, 8.0, DOCS)),
    "no-reject": ({}, {"early_reject": False}, lambda: _noisy(32, 8.0, DOCS)),
    "piecewise": ({"variant": "piecewise"}, {}, lambda: _quadratic(32, 8.0, DOCS)),
    "critical": ({"variant": "critical"}, {"reject": "race"}, lambda: _noisy(32, 8.0, DOCS)),
    "fixed-start": ({"start_tokens": (4,)}, {}, lambda: _quadratic(32, 8.0, DOCS)),
    "rows": ({}, {"reject": "race"}, lambda: _Rows(_noisy(32, 8.0, DOCS), 3)),
    "tiny-space": ({"half": 2, "scale": 1.1, "max_factor": 1.15, "step": 0.05, "start_tokens": (0, 1)}, {},
                   lambda: _quadratic(2, 1.1, DOCS)),
}


def synthetic_state(optimizer: str, case: str) -> dict:
    space_kw, config_kw, objective = SYNTHETIC[case]
    space_kw = {"half": 32, "scale": 8.0, "max_factor": 10.0, **space_kw}
    if space_kw.get("variant") == "critical":
        space_kw["critical_dim"] = critical_dimension(2 * space_kw["half"], 10000.0, 128)
    space = SearchSpace(**space_kw)
    config = SearchConfig(**{"population": 16, "parents": 8, "mutations": 4, "crossovers": 4, "iterations": 8,
                             "seed": 5, **config_kw})
    seeds = peer_seeds(RotarySpec(2 * space.half, 10000.0, 128), space.scale)
    return run_search(OPTIMIZERS[optimizer](space, config), Scoring(objective(), len(DOCS)), seeds).to_dict()


def synthetic_record(state: dict) -> dict:
    history = state["history"]
    return {"sha256": hashlib.sha256(json.dumps(state).encode()).hexdigest(), "generations": state["generation"],
            "candidates": len(history), "rejected": sum(r["rejected"] for r in history)}


def write_synthetic() -> None:
    records = {f"{opt}/{case}": synthetic_record(synthetic_state(opt, case)) for opt in ("ga", "cma") for case in SYNTHETIC}
    (DATA / "synthetic.json").write_text(json.dumps(records, indent=2) + "\n")


@pytest.mark.parametrize("optimizer", ["ga", "cma"])
@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_a_synthetic_search_gives_the_committed_state(optimizer, case):
    _same_platform("numpy", "cmaes")
    want = json.loads((DATA / "synthetic.json").read_text())[f"{optimizer}/{case}"]
    assert synthetic_record(synthetic_state(optimizer, case)) == want


if __name__ == "__main__":
    scratch = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/longrope-search-fixtures")
    shutil.rmtree(scratch, ignore_errors=True)
    write_runs(scratch)
    write_synthetic()
    print(f"wrote {DATA}")
