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
