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
