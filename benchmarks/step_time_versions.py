"""Training step time of this checkout against another version of the library, through the real
CLI driver: the same commands, the two versions interleaved round by round.

    git worktree add ../baseline COMMIT
    python benchmarks/step_time_versions.py --baseline ../baseline/src --out docs/bench/step_time \
        [--rounds 3 --steps 150 --data-dir ../shared/data]

Each row runs ``diffusionblocks train TASK --mode MODE --steps N`` (tiny evaluation) once per
version per round and reads the per-step ``seconds`` of its metrics.jsonl (batch +
step, logged every 10 steps, the first skipped). Writes OUT/step_time.json and OUT/step_time.md:
per row, the median over rounds of each version's median step time, and their ratio (this /
baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from diffusionblocks.report import markdown_table

HERE = Path(__file__).resolve().parents[1] / "src"
TEXT = ["--data", "tinyshakespeare", "--num-samples", "2", "--sample-length", "16"]
SAME = ["--match", "steps"]  # the budget as given, not stretched by B
ROWS = {
    "classify dblocks": ["classify", "--mode", "dblocks", "--dataset", "digits", *SAME],
    "generate dblocks": ["generate", "--mode", "dblocks", "--dataset", "digits", "--num-samples", "10",
                         *SAME],
    "mdm dblocks": ["mdm", "--mode", "dblocks", *TEXT, "--bound-passes", "2", *SAME],
    "ar dblocks": ["ar", "--mode", "dblocks", *TEXT, *SAME],
    "recurrent dblocks": ["recurrent", "--mode", "dblocks", *TEXT],
}


def median_step(src: Path, argv: list[str], steps: int, data_dir: str, threads: int) -> float:
    env = os.environ | {"PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "diffusionblocks", "train", *argv, "--steps", str(steps),
               "--evals", "1", "--data-dir", data_dir, "--quiet", "--out", out]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in rows if "loss" in r and r["step"] > 10]  # logged every 10 steps
    return statistics.median(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True, help="the other version's src folder")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--rows", nargs="*", default=["classify dblocks", "generate dblocks", "mdm dblocks"],
                   choices=list(ROWS), help="default: the three whose evaluation is cheap")
    p.add_argument("--out", type=Path, default=Path("docs/bench/step_time"))
    args = p.parse_args()
    times: dict[str, dict[str, list[float]]] = {r: {"this": [], "baseline": []} for r in args.rows}
    for _ in range(args.rounds):
        for row in args.rows:
            for name, src in (("baseline", args.baseline.resolve()), ("this", HERE)):
                times[row][name].append(median_step(src, ROWS[row], args.steps, args.data_dir, args.threads))
    records = []
    for row, t in times.items():
        this, base = statistics.median(t["this"]), statistics.median(t["baseline"])
        records.append({"row": row, "this_seconds": this, "baseline_seconds": base, "ratio": this / base,
                        "rounds": t})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_time.json").write_text(json.dumps(records, indent=1) + "\n")
    table = markdown_table([[r["row"], f"{r['this_seconds']:.4f}", f"{r['baseline_seconds']:.4f}",
                            f"{r['ratio']:.3f}"] for r in records],
                           ["row", "this (s/step)", "baseline (s/step)", "this / baseline"])
    (args.out / "step_time.md").write_text(
        f"Median training step time, {args.rounds} interleaved rounds of {args.steps} steps, "
        f"{args.threads} thread(s), this checkout vs `{args.baseline}`.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
