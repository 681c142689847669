"""Why autoregressive DiffusionBlocks' samples read worse (docs/results.md, "Judging samples").

Takes a finished ``compare --task ar`` run (RUN/e2e, RUN/dblocks), samples both models again
under variants of their decoding, and judges every variant's continuations as ``compare``
does: bits per character and MAUVE under the independent judge (read from the cache, trained
first if absent), bits per character under the end-to-end contestant. The real continuations
of the same prompts are scored too (the reference). Beside each variant: the accuracy of its
draw on the first 64 test windows, teacher-forced (how often the drawn token is right).
Retrained DiffusionBlocks variants (partition, γ, …) are other runs, given as ``--extra
LABEL=RUN_DIR`` and judged at their own settings. Rows already in OUT.json (same run, judge and
counts) are kept, so a later call adds new extras without redoing the rest.

    OMP_NUM_THREADS=1 python benchmarks/ar_probes.py --run runs/ar_judged --data-dir ../shared/data \\
        --extra "equiprob partition=runs/arprobe/equiprob" --out docs/lm/ar_probes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from diffusionblocks.blocks import DiffusionBlocks
from diffusionblocks.tasks import ar
from diffusionblocks.tasks.judge import independent_judge, judged
from diffusionblocks.tasks.text import batched, load_data, resolved

E2E = [("temperature 1", {}), ("temperature 0.9", {"temperature": 0.9}),
       ("temperature 0.8", {"temperature": 0.8}), ("top-p 0.95 (the paper's)", {"decoding": "paper"})]
DBLOCKS = [("draw temperature 1, Euler, 4 steps (one per block)", {}),
           ("draw temperature 0.9", {"temperature": 0.9}), ("draw temperature 0.8", {"temperature": 0.8}),
           ("draw temperature 0.7", {"temperature": 0.7}), ("Euler, 8 steps", {"sample_steps": 8}),
           ("Euler, 16 steps", {"sample_steps": 16}), ("Heun, 4 points", {"sampler": "heun"})]
KEYS = ("draw_accuracy", "judge_bpc", "mauve", "e2e_judge_bpc", "seconds")


@torch.no_grad()
def draw_accuracy(model: nn.Module, cfg: ar.ARConfig, data, windows: int = 64) -> float:
    """How often the model's draw at ``cfg``'s decoding is the right next token, teacher-forced
    over the first ``windows`` test windows (for a next-token model: the mean probability the
    draw gives the right token, nucleus renormalised)."""
    gen = torch.Generator().manual_seed(cfg.seed + 777)
    right = count = 0.0
    for w in batched(ar.test_windows(data.test, cfg.lm.context)[:windows], 64):
        x, y = w[:, :-1], w[:, 1:]
        if isinstance(model, DiffusionBlocks):
            right += (ar.predict(model, x, cfg, gen, cfg.temperature).argmax(-1) == y).sum().item()
        else:
            probs = ar.nucleus((model(x).float() / cfg.temperature).softmax(-1), ar.top_p(cfg))
            right += (probs.gather(-1, y[..., None]) / probs.sum(-1, keepdim=True)).sum().item()
        count += y.numel()
    return right / count


def probe(model: nn.Module, cfg: ar.ARConfig, data, real, judges: dict) -> dict:
    start = time.perf_counter()
    ids = ar.samples(model, cfg, data)
    result = judged(ids, real, cfg.prompt_length, judges, data)
    result["seconds"] = time.perf_counter() - start  # sampling and judging
    result["draw_accuracy"] = draw_accuracy(model, cfg, data)
    result["example"] = data.tokenizer.decode(ids[0, cfg.prompt_length :])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished `compare --task ar` run folder")
    parser.add_argument("--data-dir")
    parser.add_argument("--extra", nargs="*", default=[], metavar="LABEL=RUN_DIR",
                        help="other DiffusionBlocks runs (their checkpoints), judged at their settings")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--continuations", type=int, default=2)
    parser.add_argument("--out", default="docs/lm/ar_probes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    settings = {"num_samples": args.num_samples, "continuations": args.continuations} | (
        {"data_dir": args.data_dir} if args.data_dir else {})

    def loaded(folder: Path) -> tuple[nn.Module, ar.ARConfig]:
        model, cfg = ar.load(folder / "checkpoint")
        return model, ar.ARConfig.from_dict(cfg.to_dict() | settings)

    e2e, e2e_cfg = loaded(run / "e2e")
    dblocks, dblocks_cfg = loaded(run / "dblocks")
    data = load_data(e2e_cfg)
    judges, about = independent_judge(data, ar.ARConfig.from_dict(resolved(e2e_cfg, data)))
    judges["e2e_judge"] = e2e
    real = ar.real_continuations(data, e2e_cfg)
    reference = judged(real, real, e2e_cfg.prompt_length, judges, data)
    rows = [("real", "the test text's own continuations", reference)]
    variants = [("e2e", e2e, e2e_cfg, label, o) for label, o in E2E]
    variants += [("dblocks", dblocks, dblocks_cfg, label, o) for label, o in DBLOCKS]
    for item in args.extra:
        label, folder = item.rsplit("=", 1)
        if not (Path(folder) / "result.json").exists():
            raise SystemExit(f"{folder} has not finished training (no result.json)")
        model, cfg = loaded(Path(folder))
        variants.append(("dblocks", model, cfg, label, {}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"run": str(run), "judge": about, "prompts": args.num_samples,
              "continuations": args.continuations}
    done = {}  # rows of an earlier call with the same run, judge and counts are kept
    if out.with_suffix(".json").exists():
        earlier = json.loads(out.with_suffix(".json").read_text())
        if {k: earlier.get(k) for k in record} == record:
            done = {(r["mode"], r["variant"]): r for r in earlier["rows"]}
    for mode, model, cfg, label, overrides in variants:
        if (mode, label) in done:
            result = {k: v for k, v in done[mode, label].items() if k not in ("mode", "variant")}
        else:
            result = probe(model, ar.ARConfig.from_dict(cfg.to_dict() | overrides), data, real, judges)
        rows.append((mode, label, result))
        print(mode, label, {k: result.get(k) for k in KEYS}, flush=True)
        record["rows"] = [{"mode": m, "variant": v, **r} for m, v, r in rows]
        out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = [f"Autoregressive probes at inference, {run} ({args.num_samples} test prompts × "
             f"{args.continuations} continuations; the judge scores the test text at "
             f"{about['test_bpc']:.3f} bits per character)", "",
             "| mode | variant | draw accuracy | judge BPC | MAUVE ± sd (10 k-means seeds) | e2e-judge BPC "
             "| seconds |",
             "|---" * 7 + "|"]
    for mode, label, r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r.get(k), float) else "–" for k in KEYS[:-1]]
        cells[2] += f" ± {r['mauve_sd']:.3f}" if isinstance(r.get("mauve_sd"), float) else ""
        lines.append(f"| {mode} | {label} | " + " | ".join(cells) + f" | {r.get('seconds', 0):.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
