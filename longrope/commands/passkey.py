"""`longrope passkey`: passkey retrieval accuracy by length and needle depth."""
from __future__ import annotations

import random
from dataclasses import asdict

from ..errors import UsageError
from ..io import atomic_write_json, check_writable_dir
from .common import (
    add_method_args,
    add_model_args,
    factor_files,
    method_names,
    method_variants,
    parse_int_list,
    print_table,
    run_info,
)


def register(sub) -> None:
    p = sub.add_parser(
        "passkey",
        help="passkey retrieval accuracy vs length (standard prompt, greedy decoding)",
        description="For each method and length, --trials prompts of that many tokens with a random "
        "5-digit-or-less key at a random depth (seeded); greedy-decode 10 tokens with a KV cache and "
        "count a hit when the first integer equals the key. Writes passkey.json and passkey.png "
        "(length x depth heat map) to --out.",
    )
    add_model_args(p)
    add_method_args(p)
    p.add_argument("--lengths", default=None,
                   help="comma-separated lengths in tokens, prompt + answer (default: 1x,2x,4x,8x native)")
    p.add_argument("--trials", type=int, default=10, help="trials per length and method (default: 10)")
    p.add_argument("--depth-bins", type=int, default=5, help="rows of the heat map (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of keys and depths (default: 0)")
    p.add_argument("--out", default="runs/passkey", help="output directory (default: runs/passkey)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from ..evaluate.passkey import run_trials
    from ..model import install_rope, load_model
    from ..plots import plot_passkey_heatmap

    if args.trials < 1:
        raise UsageError("--trials must be >= 1")
    out = check_writable_dir(args.out)
    method_names(args), factor_files(args)  # fail on bad input before loading anything
    given_lengths = parse_int_list(args.lengths, "--lengths") if args.lengths else None
    loaded = load_model(args.model, args.dtype, args.device)
    L = loaded.spec.original_max_position_embeddings
    lengths = given_lengths or [L, 2 * L, 4 * L, 8 * L]
    variants = method_variants(args, loaded.spec, args.target_length or max(lengths))
    trials, rows = [], []
    bar = tqdm(total=len(variants) * len(lengths) * args.trials, desc="passkey", unit="trial")
    for variant in variants:
        install_rope(loaded.model, variant.extension)
        for length in lengths:
            rng = random.Random(f"{args.seed}:{length}")  # same keys and depths for every method
            try:
                results = run_trials(loaded.model, loaded.tokenizer, length, args.trials, rng)
            except ValueError as e:
                raise UsageError(str(e)) from None
            for r in results:
                trials.append({"method": variant.label, **asdict(r)})
            acc = sum(r.correct for r in results) / len(results)
            rows.append({"method": variant.label, "length": length, "accuracy": acc})
            bar.update(args.trials)
            bar.set_postfix(method=variant.label, length=length, acc=f"{acc:.0%}")
            atomic_write_json(out / "passkey.json", {"config": run_info(args, {"model": loaded.name, "lengths": lengths}),
                                                     "rows": rows, "trials": trials})
    bar.close()
    plot_passkey_heatmap(trials, out / "passkey.png", args.depth_bins, title=f"{loaded.name}: passkey retrieval")
    print(f"passkey accuracy over {args.trials} trial(s) per cell:")
    print_table(rows, "method", "length", "accuracy", fmt="{:.0%}")
    print(f"wrote {out / 'passkey.json'}, {out / 'passkey.png'}")
    return 0
