"""`longrope passkey`: passkey retrieval accuracy by length and needle depth."""
from __future__ import annotations

import random

from ..errors import UsageError
from ..evaluate.runner import passkey_figures, run_cells
from ..atomic import atomic_write_json
from ..outputs import output_dir
from ..options import ranged
from ..models.load import load_model
from ..plots import plot_depth_heatmap
from .common import add_method_args, add_model_args, check_inputs, method_variants, print_table, run_info


def register(sub) -> None:
    p = sub.add_parser(
        "passkey",
        help="passkey retrieval accuracy vs length (standard prompt, greedy decoding)",
        description="For each method and length, --trials prompts of that many tokens with a random "
        "5-digit-or-less key at a random depth (seeded); greedy-decode up to 10 tokens (stopping at EOS) with a KV cache and "
        "count a hit when the first integer equals the key. Writes passkey.json and passkey.png "
        "(length x depth heat map) to --out.",
    )
    add_model_args(p)
    add_method_args(p)
    p.add_argument("--lengths", default=None,
                   help="comma-separated lengths in tokens, prompt + answer (default: 1x,2x,4x,8x native)")
    p.add_argument("--trials", type=ranged(int, min=1, max=100_000), default=10,
                   help="trials per length and method (default: 10)")
    p.add_argument("--depth-bins", type=ranged(int, min=1, max=50), default=5,
                   help="rows of the heat map (default: 5)")
    p.add_argument("--seed", type=ranged(int, min=0), default=0, help="seed of keys and depths (default: 0)")
    p.add_argument("--out", default="runs/passkey", help="output directory (default: runs/passkey)")
    p.set_defaults(func=run)


def run(args) -> int:
    given_lengths = check_inputs(args)  # fail on bad input before loading anything
    with output_dir(args.out, command="passkey", outputs=("passkey.json", "passkey.png"), marker="passkey.json",
                    inputs=[args.model, *args.factors]) as out:
        return evaluate(args, out, given_lengths)


def evaluate(args, out, given_lengths: list[int] | None) -> int:
    loaded = load_model(args.model, args.dtype, args.device)
    L = loaded.spec.original_max_position_embeddings
    lengths = given_lengths or [L, 2 * L, 4 * L, 8 * L]
    target = args.target_length or max(lengths)
    variants = method_variants(args, loaded, target)
    info = run_info(args, {"model": loaded.name, "native_context": L, "rotary": vars(loaded.spec) | {},
                           "target_length": target, "lengths": lengths, "trials": args.trials, "seed": args.seed,
                           "dtype": str(next(loaded.model.parameters()).dtype)})

    def cell(lm, variant, length, progress):
        rng = random.Random(f"{args.seed}:{length}")  # same keys and depths for every method
        try:
            figures = passkey_figures(lm, length, args.trials, rng, progress)
        except ValueError as e:
            raise UsageError(str(e)) from None
        return {"method": variant.label, "length": length, **figures,
                "extension": None if variant.extension is None else variant.extension.to_dict()}

    def tables(cells):
        rows = [{"method": c["method"], "length": c["length"], "accuracy": c["accuracy"], "trials": len(c["trials"]),
                 "extension": c["extension"]} for c in cells.values()]
        return rows, [{"method": c["method"], **t} for c in cells.values() for t in c["trials"]]

    def save(cells):  # after every cell
        rows, trials = tables(cells)
        atomic_write_json(out / "passkey.json", {"config": info, "rows": rows, "trials": trials})

    rows, trials = tables(run_cells(variants, lengths, {"passkey": cell}, loaded, on_cell=save, desc="passkey"))
    plot_depth_heatmap(trials, out / "passkey.png", args.depth_bins,
                       title=f"{loaded.name}: passkey retrieval, {args.trials} trial(s) per length")
    print(f"passkey accuracy over {args.trials} trial(s) per cell:")
    print_table(rows, "method", "length", "accuracy", fmt="{:.0%}")
    print(f"wrote {out / 'passkey.json'}, {out / 'passkey.png'}")
    return 0
