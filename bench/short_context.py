"""What an extension costs a model below its native context, as users measure it: lm-eval tasks of
both kinds (log-likelihood multiple choice, greedy generation), built from held-out prose, on

    none        SmolLM2-135M as trained
    longrope    the shipped factors in longrope's runtime (`longrope lm-eval --factors NAME`: short
                factors and short attention factor 1 below 8192 tokens, so the model as trained)
    exported    the same factors exported to transformers (`longrope export`), run by lm-eval's own
                `hf` model: transformers applies the one attention factor at every length
    yarn        YaRN set for the same target (`--method yarn`), at every length

    python bench/short_context.py --factors smollm2-135m-32k --items 200 --out runs/short-context

The tasks (written under OUT/tasks, from the `gutenberg` corpus's test split, which no search
reads): `prose_next` (which of four sentences follows a passage of about 150 words: the true one
and three from other books) and `prose_words` (greedy: the next word of a passage, exact match).
Writes OUT/short-context.json: per task and variant the accuracy, the item count and the 95%
Wilson interval, lm-eval's own results, and, item by item against `none`, how many answers the
variant changed (right to wrong, wrong to right) with McNemar's exact two-sided p; each variant's
lm-eval results.json and samples.jsonl beside it. (`bench/figures/smollm2-short-context.json` is
that file, as measured.)
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longrope.atomic import atomic_write_json  # noqa: E402
from longrope.data import load_corpus, select_split  # noqa: E402
from longrope.evaluate.passkey import wilson_interval  # noqa: E402


def sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", flat) if 30 <= len(s.strip()) <= 200]


def write_tasks(folder: Path, items: int, seed: int = 0) -> None:
    """prose_next (multiple choice) and prose_words (greedy generation) from held-out books."""
    rng = random.Random(seed)
    books = [sentences(d.text) for d in select_split(load_corpus("gutenberg"), "test")]
    pool = [s for b in books for s in b]
    mc, gen = [], []
    while len(mc) < items:
        book = rng.choice(books)
        i = rng.randrange(8, len(book) - 1)
        context = " ".join(book[i - 8:i])[-900:]
        choices = [book[i]] + rng.sample(pool, 3)
        order = list(range(4))
        rng.shuffle(order)
        mc.append({"context": context, "choices": [choices[j] for j in order], "label": order.index(0)})
        words = book[i].split()
        if len(gen) < items and len(words) > 4:
            gen.append({"prompt": context + " " + " ".join(words[:3]), "answer": words[3].strip(".,;:!?\"'")})
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("prose_next", mc), ("prose_words", gen)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"""
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {folder}/{{name}}.jsonl
        test_split: test
    """
    (folder / "prose_next.yaml").write_text(textwrap.dedent("""
        task: prose_next""" + common.replace("{name}", "prose_next") + """
        output_type: multiple_choice
        doc_to_text: "{{context}}"
        doc_to_choice: "{{choices}}"
        doc_to_target: label
        metric_list:
          - {metric: acc, aggregation: mean, higher_is_better: true}
    """))
    (folder / "prose_words.yaml").write_text(textwrap.dedent("""
        task: prose_words""" + common.replace("{name}", "prose_words") + """
        output_type: generate_until
        doc_to_text: "{{prompt}}"
        doc_to_target: "{{answer}}"
        generation_kwargs: {until: ["\\n"], max_gen_toks: 4, do_sample: false}
        filter_list:
          - name: strip
            filter: [{function: regex, regex_pattern: "(\\\\w+)"}, {function: take_first}]
        metric_list:
          - {metric: exact_match, aggregation: mean, higher_is_better: true, ignore_case: true}
    """))


def run(args, variant: str, out: Path) -> dict:
    tasks = ["prose_next", "prose_words"]
    folder = out / variant
    if not (folder / "results.json").is_file():
        if variant == "exported":
            export = out / "export"
            if not (export / "config.json").is_file():
                subprocess.run([sys.executable, "-m", "longrope", "export", "--model", "smollm2-135m", "--factors",
                                args.factors, "--out", str(export)], check=True)
            cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                   f"pretrained={export},dtype={args.hf_dtype}", "--tasks", ",".join(tasks), "--include_path",
                   str(out / "tasks"), "--output_path", str(folder / "lm-eval"), "--batch_size", "1", "--log_samples"]
            subprocess.run(cmd, check=True)
            found = sorted((folder / "lm-eval").rglob("results_*.json"))
            folder.mkdir(parents=True, exist_ok=True)
            samples = [json.dumps({"task": task, **json.loads(line)}) + "\n" for task in tasks
                       for line in sorted((folder / "lm-eval").rglob(f"samples_{task}_*.jsonl"))[-1].open()]
            (folder / "samples.jsonl").write_text("".join(samples))
            (folder / "results.json").write_text(found[-1].read_text())
        else:
            pick = {"none": ["--method", "none"], "longrope": ["--factors", args.factors],
                    "yarn": ["--method", "yarn", "--target-length", str(args.target)]}[variant]
            subprocess.run([sys.executable, "-m", "longrope", "lm-eval", "--model", "smollm2-135m", *pick,
                            "--dtype", args.dtype, "--tasks", ",".join(tasks), "--include-path", str(out / "tasks"),
                            "--out", str(folder)], check=True)
    whole = json.loads((folder / "results.json").read_text())
    results, counts = whole["results"], whole.get("n-samples", {})
    row = {"lm_eval": {task: results[task] for task in tasks}}
    for task, metric in (("prose_next", "acc,none"), ("prose_words", "exact_match,strip")):
        acc = results[task].get(metric, results[task].get(metric.split(",")[0] + ",none"))
        n = counts.get(task, {}).get("effective", args.items)
        lo, hi = wilson_interval(round(acc * n), n)
        row[task] = {"accuracy": acc, "items": n, "interval_95": [lo, hi]}
    return row


METRIC = {"prose_next": "acc", "prose_words": "exact_match"}


def correct(folder: Path) -> dict[tuple[str, int], bool]:
    """Each item's outcome in a variant's samples.jsonl: (task, doc_id) -> right."""
    rows = (json.loads(line) for line in (folder / "samples.jsonl").open())
    return {(r["task"], r["doc_id"]): bool(r[METRIC[r["task"]]]) for r in rows if r["task"] in METRIC}


def paired(base: dict, other: dict, task: str) -> dict:
    """Item by item against the base: answers lost (right -> wrong), gained, and McNemar's exact p."""
    keys = [k for k in base if k[0] == task and k in other]
    lost = sum(base[k] and not other[k] for k in keys)
    gained = sum(other[k] and not base[k] for k in keys)
    n, low = lost + gained, min(lost, gained)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2 ** n) if n else 1.0
    return {"items": len(keys), "lost": lost, "gained": gained, "mcnemar_p": p}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factors", default="smollm2-135m-32k")
    p.add_argument("--target", type=int, default=32768, help="YaRN's target (the factors' own)")
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--hf-dtype", default="float32", help="dtype of lm-eval's hf model for the export")
    p.add_argument("--variants", default="none,longrope,exported,yarn")
    p.add_argument("--out", default="runs/short-context")
    args = p.parse_args()
    out = Path(args.out)
    if not (out / "tasks" / "prose_next.yaml").is_file():
        write_tasks(out / "tasks", args.items)
    rows = {v: run(args, v, out) for v in args.variants.split(",")}
    if "none" in rows:
        base = correct(out / "none")
        for v in rows:
            if v != "none":
                other = correct(out / v)
                for task in METRIC:
                    rows[v][task]["vs_none"] = paired(base, other, task)
    atomic_write_json(out / "short-context.json", {"model": "smollm2-135m", "factors": args.factors, "items": args.items,
                                                   "dtype": args.dtype, "variants": rows})
    for v, row in rows.items():
        print(f"{v:>9}: " + "; ".join(f"{t} {r['accuracy']:.3f} [{r['interval_95'][0]:.3f}, {r['interval_95'][1]:.3f}] "
                                      f"of {r['items']}" + _change(r) for t, r in row.items() if t in METRIC))
    return 0


def _change(r: dict) -> str:
    if "vs_none" not in r:
        return ""
    c = r["vs_none"]
    return f" (vs none: -{c['lost']} +{c['gained']}, p {c['mcnemar_p']:.2f})"


if __name__ == "__main__":
    sys.exit(main())
