"""Do factors searched on one kind of text hold on another? Factors searched on code, on prose and
on the mix, each evaluated on held-out code and held-out prose, whole and by band of positions,
beside NTK and YaRN and the native-window floor of each text.

    python bench/transfer_table.py --length 32768 --factors code=F1.json,prose=F2.json,mix=F3.json \\
        --out runs/transfer-32k

For each text (held-out code: `stdlib-packages`, held-out prose: `gutenberg`; their validation
splits, which no search reads, `--docs` documents each, the longest first) one
`longrope eval-ppl --by-position` of every factors file (labelled by its name here) and of NTK and
YaRN at `--length`, and the floor: the same tokens past the native window scored by the unextended
model in native windows (`bench/window_floor.py`). Writes OUT/transfer.json and OUT/transfer.md
(perplexity; each band; each method's difference to the best of NTK and YaRN).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from longrope.atomic import atomic_write_json, atomic_write_text  # noqa: E402

TEXTS = {"code": "stdlib-packages", "prose": "gutenberg"}


def evaluate(args, text: str, corpus: str, factors: dict[str, Path], out: Path) -> dict:
    where = out / f"{text}-{args.length}"
    if not _has_rows(where / "results.json", args.length, ["ntk", "yarn", *factors]):
        # eval-ppl reuses the cells an earlier run of the folder scored: only new factors are run
        cmd = [sys.executable, "-m", "longrope", "eval-ppl", "--model", args.model, "--corpus", corpus, "--split",
               "validation", "--docs", str(args.docs), "--lengths", str(args.length), "--methods", "ntk,yarn",
               "--by-position", "--dtype", args.dtype, "--out", str(where)]
        for path in factors.values():
            cmd += ["--factors", str(path)]
        subprocess.run(cmd, check=True)
    rows = json.loads((where / "results.json").read_text())["rows"]
    return {r["method"]: {"ppl": r["ppl"], "bands": {f"{b['start']}-{b['end'] - 1}": b["ppl"] for b in r["bands"]}}
            for r in rows}


def _has_rows(path: Path, length: int, methods: list[str]) -> bool:
    if not path.is_file():
        return False
    results = json.loads(path.read_text())
    return results["config"].get("lengths") == [length] and set(methods) <= {r["method"] for r in results["rows"]}


def floor(args, corpus: str, out: Path, text: str) -> dict[str, float]:
    """The native-window floor of each band past the native context (kept in OUT once computed)."""
    path = out / f"floor-{text}-{args.length}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from window_floor import leading_bos, window_floor_nll

    from longrope.data import split_documents
    from longrope.models.load import load_model
    from longrope.seam import install_rope

    lm = load_model(args.model, dtype=args.dtype)
    install_rope(lm.model, None)
    L = lm.spec.original_max_position_embeddings
    docs = split_documents(lm.tokenizer, corpus, "validation", args.length, args.docs)
    bos = leading_bos(lm.tokenizer, docs)
    bands, lo, total = {}, L, [0.0, 0]
    while lo < args.length:
        hi = min(2 * lo, args.length)
        nll, n = window_floor_nll(lm.model, docs, L, lo, hi, bos)
        bands[f"{lo}-{hi - 1}"] = math.exp(nll / n)
        total = [total[0] + nll, total[1] + n]
        lo = hi
    result = {**bands, f"{L}-{args.length - 1}": math.exp(total[0] / total[1])}
    atomic_write_json(path, result)
    return result


def table(results: dict, floors: dict, methods: list[str]) -> str:
    lines = []
    for text, rows in results.items():
        bands = list(next(iter(rows.values()))["bands"])
        best_peer = min(("ntk", "yarn"), key=lambda m: rows[m]["ppl"])
        lines += [f"### held-out {text} ({TEXTS[text]} validation)", "",
                  "| method | whole | vs best peer | " + " | ".join(bands) + " |",
                  "| --- | ---: | ---: | " + " | ".join("---:" for _ in bands) + " |"]
        for m in methods:
            r = rows[m]
            vs = r["ppl"] / rows[best_peer]["ppl"] - 1
            lines.append(f"| {m} | {r['ppl']:.2f} | {vs:+.1%} | " + " | ".join(f"{r['bands'][b]:.2f}" for b in bands)
                         + " |")
        lines.append("| native-window floor | | | " + " | ".join(
            f"{floors[text][b]:.2f}" if b in floors[text] else "-" for b in bands) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--factors", required=True, help="NAME=FILE,... (a name labels the factors in the table)")
    p.add_argument("--docs", type=int, default=2)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--out", default="runs/transfer")
    args = p.parse_args()
    out = Path(args.out)
    (out / "factors").mkdir(parents=True, exist_ok=True)
    factors = {}
    for item in args.factors.split(","):
        name, path = item.split("=", 1)
        factors[name] = out / "factors" / f"{name}.json"  # its file name labels it in eval-ppl
        if not factors[name].is_file():
            from longrope.hf_config import load_factors

            ext = load_factors(path)
            ext.with_(metadata={**ext.metadata, "label": name}).save(factors[name])
    results = {text: evaluate(args, text, corpus, factors, out) for text, corpus in TEXTS.items()}
    floors = {text: floor(args, corpus, out, text) for text, corpus in TEXTS.items()}
    methods = ["ntk", "yarn", *factors]
    atomic_write_json(out / "transfer.json", {"length": args.length, "docs": args.docs, "dtype": args.dtype,
                                              "results": results, "floors": floors})
    md = table(results, floors, methods)
    atomic_write_text(out / "transfer.md", md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
