"""Slow checks of exported models in other runtimes, each in its own environment.

- transformers 4.x: `bench/export_parity.py` builds a virtual environment with the latest
  4.x release ($LONGROPE_TF4_VENV, default a temp folder) and compares logits.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_export_parity_with_transformers_4x(tmp_path):
    venv = os.environ.get("LONGROPE_TF4_VENV") or str(Path(tempfile.gettempdir()) / "longrope-transformers4")
    out = tmp_path / "parity.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "export_parity.py"), "--venv", venv, "--out", str(out)],
                   check=True, timeout=3600)
    import json

    result = json.loads(out.read_text())
    assert {r["transformers"].split(".")[0] for r in result["rows"]} >= {"4", "5"}
    assert result["worst"] < 1e-4
