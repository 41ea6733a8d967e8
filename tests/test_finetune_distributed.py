"""Fine-tuning on several processes (DDP over gloo, launched by torchrun) sees the same rows
and takes the same steps as one process with the whole batch."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_finetune import pi_extension

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_two_processes_equal_one(tiny_model_dir, tiny_corpus, tmp_path):
    factors = tmp_path / "f.json"
    pi_extension(64).save(factors)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def args(out, batch):
        return ["finetune", "--model", str(tiny_model_dir), "--factors", str(factors), "--corpus", str(tiny_corpus),
                "--length", "64", "--steps", "4", "--lr", "3e-3", "--batch-size", str(batch),
                "--mixed-precision", "no", "--out", str(out)]

    # rows of micro-batch m: one process with batch 2 takes rows 2m, 2m+1; rank r of two takes 2m + r
    subprocess.run([sys.executable, "-m", "longrope", *args(tmp_path / "one", 2)], check=True, env=env)
    subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "longrope",
                    *args(tmp_path / "two", 1)], check=True, env=env)
    one = json.loads((tmp_path / "one" / "finetune.json").read_text())
    two = json.loads((tmp_path / "two" / "finetune.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
