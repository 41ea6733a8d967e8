"""A search (each optimizer) killed with SIGKILL at random moments and resumed ends exactly
like an uninterrupted one; a search scored by 2 gloo processes equals the same on one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from longrope.rope import RotarySpec
    from longrope.search.loop import OPTIMIZERS, peer_seeds, run_search
    from longrope.search.scoring import Scoring
    from longrope.search.state import SearchConfig, SearchState, write_history
    from longrope.search.genes import SearchSpace

    out, name = Path(sys.argv[1]), sys.argv[2]
    spec = RotarySpec(64, 10000.0, 128)
    space = SearchSpace(half=32, scale=8.0, max_factor=10.0)
    target = np.linspace(1.0, 8.0, 32)

    def objective(lam, n):
        for w in (1.0, 2.0, 0.5):
            time.sleep(0.004)  # slow enough to be killed in the middle of a generation
            yield w + float(np.mean((lam - target) ** 2)) + 0.001 * abs(n - 4)

    def checkpoint(state):
        write_history(out, state, space)
        state.save(out)

    state = SearchState.load(out) if (out / "state.json").exists() else None
    print("start", flush=True)
    t0 = time.perf_counter()
    cfg = SearchConfig(population=16, parents=8, mutations=4, crossovers=4, iterations=12, seed=3)
    run_search(OPTIMIZERS[name](space, cfg), Scoring(objective, 3), peer_seeds(spec, 8.0), state=state,
               on_generation=checkpoint)
    print(time.perf_counter() - t0, flush=True)
""")


def _driver(tmp_path: Path) -> Path:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    return path


def _env():
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


# the fast tier kills the GA once; CMA-ES shares the checkpoint code and has in-process resume tests
@pytest.mark.parametrize("name,kills", [("ga", 1), pytest.param("ga", 6, marks=pytest.mark.slow),
                                        pytest.param("cma", 2, marks=pytest.mark.slow)])
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_result(tmp_path, name, kills):
    driver = _driver(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run([sys.executable, str(driver), str(whole), name], check=True, env=_env(),
                          capture_output=True, text=True)
    work = float(done.stdout.split()[-1])  # seconds of searching, imports excluded
    rng = np.random.default_rng(kills)
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, str(driver), str(killed), name], env=_env(),
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "start"
        time.sleep(float(rng.uniform(0.05, 0.6)) * work / kills)  # a random moment of the search
        assert proc.poll() is None, "the search finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    subprocess.run([sys.executable, str(driver), str(killed), name], check=True, env=_env(), capture_output=True)
    state = json.loads((killed / "state.json").read_text())
    assert state == json.loads((whole / "state.json").read_text())
    assert (killed / "history.jsonl").read_text() == (whole / "history.jsonl").read_text()


# -- two processes ------------------------------------------------------------------------------
def _rank_main(rank: int, world: int, port: int, out: str, name: str):
    import torch.distributed as dist

    from longrope.search.distributed import Dist, distributed_evaluator

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    state = _synthetic_search(name, distributed_evaluator(Dist(rank, world, rank)))
    if rank == 0:
        Path(out).write_text(json.dumps(state.to_dict()))
    dist.destroy_process_group()


def _synthetic_search(name: str, evaluate_batch=None):
    from longrope.rope import RotarySpec
    from longrope.search.loop import OPTIMIZERS, peer_seeds, run_search
    from longrope.search.scoring import Scoring, evaluate_serial
    from longrope.search.state import SearchConfig
    from longrope.search.genes import SearchSpace

    space = SearchSpace(half=16, scale=4.0, max_factor=5.0)
    target = np.linspace(1.0, 4.0, 16) ** 1.5 / 4.0**0.5

    def objective(lam, n):
        return [w + float(np.mean((lam - target) ** 2)) for w in (0.3, 1.0, 0.7)]

    cfg = SearchConfig(population=12, parents=6, mutations=3, crossovers=4, iterations=5, seed=11)
    return run_search(OPTIMIZERS[name](space, cfg), Scoring(objective, 3), peer_seeds(RotarySpec(32, 1e4, 64), 4.0),
                      evaluate_batch=evaluate_batch or evaluate_serial)


@pytest.mark.parametrize("name", ["ga", "cma"])
def test_two_gloo_processes_give_the_single_process_result(tmp_path, name):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two.json"
    mp.spawn(_rank_main, args=(2, port, str(out), name), nprocs=2, join=True)
    assert json.loads(out.read_text()) == json.loads(json.dumps(_synthetic_search(name).to_dict()))
