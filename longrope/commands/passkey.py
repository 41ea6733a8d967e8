"""`longrope passkey`: passkey retrieval accuracy by length and needle depth.

For each method and length, --trials prompts of that many tokens with a random 5-digit-or-less key
at a random depth (seeded); greedy-decode up to 10 tokens (stopping at EOS) with a KV cache and
count a hit when the first integer equals the key. Writes passkey.json and passkey.png (length x
depth heat map) to --out; a rerun reuses a finished cell when the model files, dtype, trials, seed
and the method's factors are the same.

    longrope passkey --model tiny --lengths 256,2048 --trials 100 --out runs/passkey
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import UsageError
from ..evaluate.frontend import Store, check_methods, lengths_and_target, method_variants, run_info
from ..evaluate.passkey import wilson_interval
from ..evaluate.runner import passkey_figures, run_cells
from ..models.load import load_model, model_fingerprint
from ..options import build, check_options, option
from ..outputs import output_dir
from ..plots import plot_depth_heatmap
from ..settings import DepthOptions, LengthOptions, ModelOptions
from .common import OutputOptions, add_command, print_table

OUTPUTS = ("passkey.json", "passkey.png")
EXAMPLES = """\
examples:
  longrope passkey --lengths 256,512,1024,2048 --trials 100 --out runs/passkey
  longrope passkey --model runs/tiny-64x/final --methods model --lengths 16384 --trials 40 \\
      --out runs/pk-64x
"""


@dataclass(frozen=True)
class PasskeyOptions(DepthOptions):
    """How many passkey trials, drawn how, and how the heat map bins them."""

    trials: int = option(10, "trials per length and method", min=1, max=100_000)
    seed: int = option(0, "seed of keys and depths", min=0)

    def __post_init__(self):
        check_options(self)


OPTIONS = (ModelOptions, LengthOptions, PasskeyOptions)


def register(sub) -> None:
    add_command(sub, "passkey", run,
                [*OPTIONS, (OutputOptions, dict(skip=("resume", "force"), out="runs/passkey"))],
                help="passkey retrieval accuracy vs length (standard prompt, greedy decoding)",
                description=__doc__, epilog=EXAMPLES)


def run(args) -> int:
    opts = [build(cls, args) for cls in OPTIONS]  # bad input fails here, before anything loads
    check_methods(args.methods, args.factors)
    with output_dir(args.out, command="passkey", outputs=OUTPUTS, keep=["passkey.json"], marker="passkey.json",
                    inputs=[args.model, *args.factors]) as out:
        return evaluate(args, out, *opts)


def evaluate(args, out, model_opts: ModelOptions, lengths_opts: LengthOptions, pk: PasskeyOptions) -> int:
    loaded = load_model(model_opts.model, model_opts.dtype, model_opts.device)
    L = loaded.spec.original_max_position_embeddings
    lengths, target = lengths_and_target(lengths_opts.lengths, lengths_opts.target_length, L)
    variants = method_variants(lengths_opts.methods, lengths_opts.factors, loaded, target)
    dtype = str(next(loaded.model.parameters()).dtype)
    key = {"model": loaded.name, "model_files": model_fingerprint(model_opts.model), "dtype": dtype,
           "trials": pk.trials, "seed": pk.seed}
    info = run_info(args, {"model": loaded.name, "native_context": L, "rotary": vars(loaded.spec) | {},
                           "target_length": target, "lengths": lengths, "trials": pk.trials, "seed": pk.seed,
                           "dtype": dtype, "key": key})

    def layout(cells):
        rows = [{"method": c["method"], "length": c["length"], "accuracy": c["accuracy"], "trials": len(c["trials"]),
                 "interval_95": list(wilson_interval(sum(t["correct"] for t in c["trials"]), len(c["trials"]))),
                 "extension": c["extension"]} for c in cells.values()]
        return {"config": info, "rows": rows, "trials": [{"method": c["method"], **t} for c in cells.values()
                                                         for t in c["trials"]]}

    def cells_of(content):
        trials = content.get("trials", [])
        return [{**r, "trials": [{k: v for k, v in t.items() if k != "method"} for t in trials
                                 if t.get("method") == r["method"] and t.get("length") == r["length"]]}
                for r in content.get("rows", [])]

    store = Store(out / "passkey.json", key, layout, cells_of, key_of=lambda c: c.get("config", {}).get("key"),
                  model=model_opts.model)
    done = store.reusable(variants, cell_key=lambda c: (c["method"], "passkey", c["length"]))

    def cell(lm, variant, length, progress):
        rng = random.Random(f"{pk.seed}:{length}")  # same keys and depths for every method
        try:
            figures = passkey_figures(lm, length, pk.trials, rng, progress)
        except ValueError as e:
            raise UsageError(str(e)) from None
        return {"method": variant.label, "length": length, **figures,
                "extension": None if variant.extension is None else variant.extension.to_dict()}

    content = store.save(run_cells(variants, lengths, {"passkey": cell}, loaded, done, store.save, desc="passkey"))
    plot_depth_heatmap(content["trials"], out / "passkey.png", pk.depth_bins,
                       title=f"{loaded.name}: passkey retrieval, {pk.trials} trial(s) per length")
    print(f"passkey accuracy over {pk.trials} trial(s) per cell:")
    print_table(content["rows"], "method", "length", "accuracy", fmt="{:.0%}")
    print(f"wrote {out / 'passkey.json'}, {out / 'passkey.png'}")
    return 0
