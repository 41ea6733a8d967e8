"""From one search on a mixed corpus (one document of code, one of prose: `--corpus mixed --docs 2`),
the factors that fit each text best: the candidate with the lowest loss on the code document, on
the prose document, and on their mean (the search's own result), each as a factors file.

    python bench/select_by_text.py runs/smollm2-32k-mixed --out runs/selected-32k

Candidates rejected before their last document have no loss on it and are left out. The files
take the search's factors.json as they are (attention factor, contexts, metadata) with the
candidate's long factors, and record what selected them (metadata "selected_by", "doc_losses").
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longrope.factors import RopeExtension  # noqa: E402

NAMES = {0: "code", 1: "prose"}  # documents_of_length gives a mixed corpus's sources in turn: code first


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("search", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    best = RopeExtension.load(args.search / "factors.json")
    rows = [json.loads(line) for line in (args.search / "history.jsonl").read_text().splitlines() if line.strip()]
    full = [r for r in rows if not r["rejected"] and len(r["doc_losses"]) == 2]
    pick = {"mix": min(full, key=lambda r: sum(r["doc_losses"]))}
    for doc, name in NAMES.items():
        pick[name] = min(full, key=lambda r: r["doc_losses"][doc])
    args.out.mkdir(parents=True, exist_ok=True)
    for name, r in pick.items():
        ext = best.with_(long_factor=r["factors"], start_token=r["start_token"],
                         metadata={**best.metadata, "label": name, "selected_by": name, "doc_losses": r["doc_losses"]})
        ext.save(args.out / f"{name}.json")
        print(f"{name:>5}: code ppl {math.exp(r['doc_losses'][0]):.3f}, prose ppl {math.exp(r['doc_losses'][1]):.3f} "
              f"(generation {r['generation']}) -> {args.out / (name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
