"""Helpers shared by the test files (fixtures stay in conftest.py)."""
from __future__ import annotations


def err_of(capsys) -> str:
    return capsys.readouterr().err.strip()


def one_line_error(capsys, code: int, *fragments: str) -> str:
    """Assert a command failed as bad input should: exit 2, a last stderr line `longrope ...`
    holding every fragment, no traceback. Returns that line."""
    err = err_of(capsys)
    last = err.splitlines()[-1] if err else ""
    assert code == 2, err
    assert last.startswith("longrope ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in last, last
    return last


def search(optimizer: str, space, config, objective, num_docs: int, seeds, **kwargs):
    """A search by the optimizer named `optimizer` (`OPTIMIZERS`) on a bare objective scoring
    `num_docs` documents; `run_search`'s other arguments as keywords."""
    from longrope.search.loop import OPTIMIZERS, run_search
    from longrope.search.scoring import Scoring

    return run_search(OPTIMIZERS[optimizer](space, config), Scoring(objective, num_docs), seeds, **kwargs)


def cli_error(capsys, argv) -> str:
    """Run the CLI on argv, expect one line on stderr and exit 2; return that line."""
    from longrope.cli import main

    capsys.readouterr()  # drop what earlier steps printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


# -- synthetic searches ----------------------------------------------------------------------------
def quadratic(half: int, scale: float, docs=(1.0, 2.0, 0.5)):
    """A synthetic fitness: distance to a monotone target curve, plus a per-document offset
    (documents differ in difficulty far more than candidates do, as real ones)."""
    import numpy as np

    target = np.linspace(1.0, scale, half)

    def objective(lam, start_token: int):
        base = float(np.mean((lam - target) ** 2)) + 0.001 * abs(start_token - 4)
        return [w + base for w in docs]

    return objective


def space_of(variant: str, half: int = 32, scale: float = 8.0, **kw):
    """A search space of each variant (critical: cd of a rope base 1e4, native 128)."""
    from longrope.search.genes import SearchSpace, critical_dimension

    cd = critical_dimension(2 * half, 10000.0, 128) if variant == "critical" else 0
    return SearchSpace(half=half, scale=scale, max_factor=1.25 * scale, variant=variant, critical_dim=cd, **kw)


def assert_valid(space, g) -> None:
    """A genome in its space: within bounds, non-decreasing factors of the right length."""
    import numpy as np

    assert space.is_valid(g), g
    lam = space.factors(g)
    assert lam.shape == (space.half,)
    assert np.all(np.diff(lam) >= -1e-12), lam
    assert lam.min() >= 1.0 - 1e-12 and lam.max() <= space.max_factor + 1e-9


def model_and_corpus(tmp_path_factory, name: str):
    """A tiny random Llama (native 32, one token per character) and a word-salad corpus: what a
    CLI search or evaluation runs end to end in seconds."""
    from conftest import make_corpus, make_tiny_model_dir

    root = tmp_path_factory.mktemp(name)
    return make_tiny_model_dir(root / "model", native=32), make_corpus(root / "corpus.jsonl", n_docs=12, chars=200)
