"""Training-step time in fp32 and bf16 autocast on this CPU: end-to-end steps of a ViT and of
two causal LMs (the autoregressive contestants' shape and the independent judge's), variants
interleaved step by step so that other load on the machine falls on each alike.

    python benchmarks/cpu_precision.py --out docs/bench [--steps 12 --warmup 3 --threads 1]

Variants: fp32; bf16 with the attention's scaled dot products left to autocast (bf16, as before
``models.vit.scaled_dot_products``); bf16 as the library runs it (those products in fp32). Writes
OUT/cpu_precision.{json,md}: per shape, the median seconds per step of each and the ratios to fp32.
bf16 only pays where the CPU multiplies bf16 matrices natively (AMX or AVX512-BF16; the JSON says
which flags this CPU has).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from diffusionblocks.models import vit
from diffusionblocks.models.lm import CausalLM, LMConfig, next_token_loss
from diffusionblocks.report import markdown_table
from diffusionblocks.training import EndToEnd, OptimConfig, step_generator

SHAPES = {  # name: (model, batch of inputs, targets, layers)
    "ViT 6x64, CIFAR-sized (32x32x3, patch 4), batch 128": lambda: (
        vit.ViTClassifier(vit.ViTConfig(image_size=32, channels=3, patch_size=4, width=64, depth=6, heads=4)),
        torch.randn(128, 3, 32, 32), torch.randint(10, (128,)), F.cross_entropy, 6),
    "causal LM 8x128, context 128, batch 32 (AR contestant)": lambda: (
        CausalLM(LMConfig(vocab_size=65, context=128, width=128, depth=8, heads=4)),
        *_windows(65, 32, 128), next_token_loss, 8),
    "causal LM 8x256, context 128, batch 32 (the judge)": lambda: (
        CausalLM(LMConfig(vocab_size=65, context=128, width=256, depth=8, heads=8)),
        *_windows(65, 32, 128), next_token_loss, 8),
}
VARIANTS = ("fp32", "bf16, bf16 attention", "bf16")


def _windows(vocab: int, batch: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randint(vocab, (batch, context + 1))
    return w[:, :-1], w[:, 1:]


def _low_precision_attention(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def measure(shape: str, steps: int, warmup: int) -> dict:
    runs = {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        model, x, y, loss_fn, layers = SHAPES[shape]()
        optim = OptimConfig(lr=1e-3, precision="fp32" if variant == "fp32" else "bf16")
        runs[variant] = (EndToEnd(model, loss_fn, optim, layers), x, y)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    losses: dict[str, float] = {}
    for t in range(warmup + steps):
        for variant, (strategy, x, y) in runs.items():
            as_before = variant == "bf16, bf16 attention"
            patch = mock.patch.object(vit, "scaled_dot_products", _low_precision_attention)
            with patch if as_before else nullcontext():
                start = time.perf_counter()
                losses[variant] = strategy.step(x, y, step_generator(0, t))["loss"]
                if t >= warmup:
                    times[variant].append(time.perf_counter() - start)
    seconds = {v: statistics.median(times[v]) for v in VARIANTS}
    return {"shape": shape, "step_seconds": seconds,
            "speedup_over_fp32": {v: seconds["fp32"] / seconds[v] for v in VARIANTS},
            "last_loss": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant (medians)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    cpu = {"bf16_flags": sorted({f for f in flags if f in ("amx_bf16", "avx512_bf16")}),
           "threads": args.threads, "torch": torch.__version__}
    records = [measure(shape, args.steps, args.warmup) for shape in SHAPES]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_precision.json").write_text(json.dumps({"cpu": cpu, "steps": args.steps, "records": records},
                                                       indent=2))
    rows = [[r["shape"], *(f"{r['step_seconds'][v] * 1e3:.0f}" for v in VARIANTS),
             *(f"{r['speedup_over_fp32'][v]:.2f}x" for v in VARIANTS[1:])] for r in records]
    header = ["shape", *(f"{v} ms/step" for v in VARIANTS), *(f"{v} speed-up" for v in VARIANTS[1:])]
    text = (f"# Training-step time, fp32 vs bf16 autocast on the CPU\n\nCPU bf16 flags: "
            f"{', '.join(cpu['bf16_flags']) or 'none'}; {args.threads} thread(s); medians of {args.steps} "
            f"steps after {args.warmup}, variants interleaved.\n\n{markdown_table(rows, header)}\n")
    (out / "cpu_precision.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
