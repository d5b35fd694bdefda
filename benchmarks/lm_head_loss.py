"""What computing the LM head only at target positions buys (DESIGN.md §4, issue #3).

Times forward+backward of the loss head alone, at SmolLM2-135M's shapes, three ways:
  full      logits for every position, then cross-entropy with -100 on prompt tokens
            (what `model(..., labels=labels).loss` does)
  targets   logits only at target positions, plain F.cross_entropy
  strop     strop's chunked fused linear cross-entropy at target positions (lm_loss.py)
and prints ms per call and peak RSS growth. Run:  python benchmarks/lm_head_loss.py
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from strop.models.lm_loss import linear_cross_entropy_sum


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048, help="positions per batch")
    ap.add_argument("--target-share", type=float, default=0.28, help="share carrying loss")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.dim, generator=g).to(dtype).requires_grad_(True)
    weight = (torch.randn(args.vocab, args.dim, generator=g) * 0.02).to(dtype)
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    is_target = torch.rand(args.tokens, generator=g) < args.target_share
    labels_masked = labels.masked_fill(~is_target, -100)

    def full():
        logits = (hidden @ weight.T).float()
        F.cross_entropy(logits, labels_masked, ignore_index=-100, reduction="sum").backward()

    def targets():
        logits = (hidden[is_target] @ weight.T).float()
        F.cross_entropy(logits, labels[is_target], reduction="sum").backward()

    def strop():
        linear_cross_entropy_sum(hidden[is_target], weight, labels[is_target], 1024).backward()

    print(
        f"{args.tokens} positions, {is_target.sum().item()} targets, V={args.vocab}, "
        f"d={args.dim}, {args.dtype}, {torch.get_num_threads()} threads (frozen head, as LoRA)"
    )
    print(f"{'way':<10}{'ms/call':>10}{'peak RSS MB':>14}")
    for name, fn in [("strop", strop), ("targets", targets), ("full", full)]:
        ms = _time(fn, args.reps)
        print(f"{name:<10}{ms:>10.1f}{_peak_mb():>14.0f}")  # peak is cumulative: run order
    # strop first so that its peak is not hidden by the others' larger ones


if __name__ == "__main__":
    main()
