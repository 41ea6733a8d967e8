"""Slow checks of exported models in other runtimes, each in its own environment.

- transformers 4.x: `bench/export_parity.py` builds a virtual environment with the latest
  4.x release ($LONGROPE_TF4_VENV, default a temp folder) and compares logits.
- llama.cpp: `bench/llamacpp_parity.py` runs the exported smollm2-135m GGUF in
  llama-cpp-python ($LONGROPE_LLAMA_CPP_PYTHON: an interpreter where `llama_cpp` imports;
  building it from PyPI source takes tens of minutes) above the native context.
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


@pytest.mark.slow
def test_llama_cpp_runs_the_exported_gguf_like_our_runtime(tmp_path):
    python = os.environ.get("LONGROPE_LLAMA_CPP_PYTHON", sys.executable)
    if subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode != 0:
        pytest.skip("llama_cpp not importable (pip install llama-cpp-python; set LONGROPE_LLAMA_CPP_PYTHON)")
    out = tmp_path / "llamacpp.json"
    subprocess.run([python, str(ROOT / "bench" / "llamacpp_parity.py"), "--out", str(out)], check=True, timeout=3600)
    import json

    rows = json.loads(out.read_text())["rows"]
    ext = rows["longrope"]
    assert abs(ext["ppl_llama_cpp"] / ext["ppl_longrope_runtime"] - 1) < 0.05  # Q4_1 GGUF vs dequantized fp32
    assert ext["greedy_equal_tokens"] >= 8
