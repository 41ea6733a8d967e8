"""What cutting a micro-batch after its last target saves in fine-tuning, side by side in one run.

  OMP_NUM_THREADS=2 python bench/finetune_padding.py --model tiny --length 16384 --steps 12

Passkey rows are prompts of random length padded to the training length N, their padding ignored
by the loss. `PackedBatches` cuts each micro-batch after its longest row's last target (attention
is causal, so no loss changes). For the same micro-batches (the recipe's 64x stage: 80% passkey
rows, 20% mixed-context micro-batches, one row each), this times a training step (forward,
backward, optimizer) on the cut batch and on the same batch padded back to N, alternating, for each
`--passkey-lengths`, and checks that both give the same loss.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from longrope.methods import build_extension  # noqa: E402
from longrope.models.load import load_model  # noqa: E402
from longrope.seam import install_rope, rotary_spec_from_config  # noqa: E402
from longrope.train.finetune import FinetuneConfig, PackedBatches, packed_stream  # noqa: E402
from longrope.train.toolkit import IGNORE, next_token_loss  # noqa: E402


def step_seconds(model, opt, x, y, w) -> tuple[float, float]:
    t0 = time.perf_counter()
    loss = next_token_loss(model(input_ids=x).logits, y, w)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=12, help="micro-batches per setting")
    args = ap.parse_args()
    lm = load_model(args.model, dtype="fp32", device="cpu")
    native = lm.spec.original_max_position_embeddings
    rope = install_rope(lm.model, None)
    ext = build_extension("yarn", rotary_spec_from_config(lm.model.config), args.length)
    lm.model.train()
    opt = torch.optim.SGD(lm.model.parameters(), lr=0.0)  # the optimizer's cost, weights unchanged
    stream = packed_stream(lm.tokenizer, None)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    for how in ("upper", "log", "mix"):
        cfg = FinetuneConfig(length=args.length, steps=args.steps, passkey_fraction=0.8, answer_weight=10,
                             mixed_context=0.2, passkey_lengths=how)
        batches = PackedBatches(stream, lm.tokenizer, cfg, native)
        cut_s = padded_s = 0.0
        tokens = worst = 0
        for m in range(args.steps):
            x, y, w, long = batches.micro_batch(m)
            rope.set_extension(ext if long else None)
            extra = (x.shape[0], (args.length if long else native) - x.shape[1])
            xp = torch.cat([x, torch.full(extra, pad)], 1)
            yp = torch.cat([y, torch.full(extra, IGNORE)], 1)
            wp = None if w is None else torch.cat([w, torch.ones(extra)], 1)
            a, la = step_seconds(lm.model, opt, x, y, w)
            b, lb = step_seconds(lm.model, opt, xp, yp, wp)
            cut_s, padded_s, tokens = cut_s + a, padded_s + b, tokens + x.numel()
            worst = max(worst, abs(la - lb) / max(abs(lb), 1e-9))
        share = tokens / (args.steps * args.length)
        print(f"--passkey-lengths {how}: {args.steps} micro-batches at {args.length}: cut {cut_s:.1f}s, "
              f"padded {padded_s:.1f}s, ratio {cut_s / padded_s:.2f} ({share:.0%} of the padded tokens; "
              f"largest loss difference {worst:.1e} relative)", flush=True)


if __name__ == "__main__":
    main()
