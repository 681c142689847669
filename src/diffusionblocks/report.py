"""Side-by-side reports: JSON, a Markdown table, and a PNG of quality vs layer evaluations."""

from __future__ import annotations

import json
from pathlib import Path


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def markdown_table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def comparison_table(results: dict[str, dict], metric: str = "test_accuracy") -> str:
    """Markdown table of a side-by-side run, one row per mode, plus the ratios that matter."""
    val = "val_accuracy" if metric == "test_accuracy" and all("val_accuracy" in r for r in results.values()) \
        else None  # chosen on validation, reported beside test
    inference = any("inference_layers" in r for r in results.values())
    traffic = any(r.get("traffic_bytes_per_step") for r in results.values())  # a peer's, between units
    header = ["mode", "blocks", *(["val accuracy"] if val else []), metric.replace("_", " "),
              "train time (s)", "s / step", "steps", "layer evals",
              *(["layers / prediction"] if inference else []), "parameters", "activations / step",
              *(["crosses blocks / step"] if traffic else [])]
    rows = []
    for mode, r in results.items():
        value = r[metric]
        extra = [f"{r['inference_layers']}" if "inference_layers" in r else "–"] if inference else []
        rows.append([
            mode, str(r.get("blocks", 1)), *([f"{100 * r[val]:.2f}%"] if val else []),
            f"{100 * value:.2f}%" if "accuracy" in metric else f"{value:.4g}",
            f"{r['train_seconds']:.1f}", f"{r['step_seconds'] * 1000:.1f} ms", str(r["steps"]),
            f"{r['layer_evals']:,}", *extra, f"{r['parameters']:,}" if "parameters" in r else "–",
            human_bytes(r["activation_bytes_per_step"]),
            *([human_bytes(r["traffic_bytes_per_step"]) if "traffic_bytes_per_step" in r else "–"]
              if traffic else []),
        ])
    table = markdown_table(rows, header)
    for mode, r in results.items():
        if r.get("chain"):
            table += f"\n{mode}, what each block contributes: {chain_line(r['chain'])}.\n"
    if {"e2e", "dblocks"} <= results.keys():
        e, d = results["e2e"], results["dblocks"]
        b = d.get("blocks", 1)
        table += (
            f"\nActivation memory per step, e2e / dblocks: "
            f"{e['activation_bytes_per_step'] / d['activation_bytes_per_step']:.2f}× (B = {b}). "
            f"Time per step, dblocks × B / e2e: {d['step_seconds'] * b / e['step_seconds']:.2f}.\n"
        )
    if "dblocks" in results and CONTROLS & results.keys() and "accuracy" in metric:
        d, controls = results["dblocks"][metric], sorted(CONTROLS & results.keys())
        table += "\nDiffusionBlocks against its controls: " + "; ".join(
            f"{'ahead of' if d > results[c][metric] else 'behind'} the {c} control by "
            f"{100 * abs(d - results[c][metric]):.2f} points" for c in controls) + ".\n"
    return table


CONTROLS = {"shallow", "ensemble"}  # the methods a reviewer asks for first (diffusionblocks.methods)


def chain_line(chain: list[dict]) -> str:
    """'block 0 alone 53.90%, block 1 given the chain so far 53.48% (chain after it 53.48%), …'
    from :func:`diffusionblocks.tasks.classify.chain_accuracy`."""
    parts = []
    for c in chain:
        if c["given_previous"] is None:
            parts.append(f"block {c['block']} not called")
        elif c["block"] == 0:
            parts.append(f"block 0 alone {100 * c['chain_after']:.2f}%")
        else:
            parts.append(f"block {c['block']} given the chain so far {100 * c['given_previous']:.2f}% "
                         f"(chain after it {100 * c['chain_after']:.2f}%)")
    return ", ".join(parts)


def plot_history(results: dict[str, dict], path: Path, metric: str = "test_accuracy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for mode, r in results.items():
        h = [p for p in r.get("history", []) if metric in p]
        if h:
            ax.plot([p["layer_evals"] for p in h], [p[metric] for p in h], marker="o", ms=3,
                    label=f"{mode} (B={r.get('blocks', 1)})")
    ax.set_xlabel("layer evaluations (training)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out: Path, results: dict[str, dict], metric: str = "test_accuracy", title: str = "") -> str:
    from .parallel import main_process

    if not main_process():  # under torchrun rank 0 writes the report
        return comparison_table(results, metric)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(results, indent=2))
    table = comparison_table(results, metric)
    (out / "report.md").write_text((f"# {title}\n\n" if title else "") + table)
    watched = "val_accuracy" if any("val_accuracy" in p for r in results.values()
                                   for p in r.get("history", [])) else metric
    plot_history(results, out / f"{watched}.png", watched)
    return table


QUALITY = ("accuracy", "bpc", "fid", "bits", "loss", "mauve", "perplexity")  # what seeds are summarized on


def seeds_report(out: Path, reports: dict[int, dict[str, dict]]) -> str:
    """Mean ± sd over seeds of every quality figure of a comparison (``reports``: seed -> the
    per-seed report.json, mode -> result), each seed's figure beside it; writes
    OUT/seeds.json and OUT/seeds.md and returns the table."""
    import statistics

    seeds = sorted(reports)
    modes = list(reports[seeds[0]])
    summary: dict[str, dict] = {}
    for mode in modes:
        names = [k for k, v in reports[seeds[0]][mode].items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and any(q in k for q in QUALITY)]
        for name in names:
            values = [reports[s][mode].get(name) for s in seeds]
            if all(isinstance(v, (int, float)) for v in values):
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                summary.setdefault(mode, {})[name] = {"mean": statistics.mean(values), "sd": sd,
                                                      "seeds": dict(zip(seeds, values))}
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps({"seeds": seeds, "modes": summary}, indent=2))
    pct = lambda name, v: f"{100 * v:.2f}" if "accuracy" in name else f"{v:.4g}"  # noqa: E731
    rows = [[mode, name.replace("_", " ") + (" (%)" if "accuracy" in name else ""),
             f"{pct(name, s['mean'])} ± {pct(name, s['sd'])}",
             ", ".join(pct(name, v) for v in s["seeds"].values())]
            for mode, figures in summary.items() for name, s in figures.items()]
    table = markdown_table(rows, ["mode", "figure", f"mean ± sd ({len(seeds)} seeds)",
                                  f"seeds {', '.join(map(str, seeds))}"])
    (out / "seeds.md").write_text(table)
    return table
