"""The README's Quick start, timed from a fresh clone: its two commands as the README gives them
(read from README.md, so the figure cannot drift from the command), in a new virtual
environment with nothing installed, on the cores given.

Writes OUT/timing.json (install, main job and test seconds, the torch build installed, cores,
date) and OUT/report.{json,md} (the main job's report), which the README renders.

    python benchmarks/main_job.py --torch-first torch==2.13.0 --out docs/bench/main_job

``--torch-first SPEC`` installs torch before the README's command, as the README's CPU-build hint
says (here: the CPU build on disk); without it ``pip`` pulls the default build (CUDA on Linux).
``--shared DIR`` is linked beside the clone as ``../shared`` (the tests' datasets).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start(readme: Path) -> tuple[str, str]:
    """The README's two Quick-start commands (install and main job; tests), comments dropped."""
    text = readme.read_text()
    block = re.search(r"## Quick start\s*```bash\n(.*?)```", text, re.S)
    if not block:
        raise SystemExit(f"{readme}: no ```bash block under '## Quick start'")
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    if len(lines) != 2:
        raise SystemExit(f"{readme}: the Quick start holds {len(lines)} commands, not 2")
    return lines[0], lines[1]


def timed(command: str, cwd: Path, env: dict, check: bool = True) -> tuple[float, int]:
    """Seconds ``command`` took in ``cwd``, and its exit status."""
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, check=check)
    return time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/main_job")
    parser.add_argument("--torch-first", help="a torch spec installed before the README's command")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--no-tests", action="store_true", help="time the install and the main job only")
    args = parser.parse_args()
    install_and_run, tests = quick_start(ROOT / "README.md")
    install, run = (part.strip() for part in install_and_run.split("&&", 1))
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "main"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        if args.shared.exists():
            (Path(tmp) / "shared").symlink_to(args.shared.resolve())
        subprocess.run(["python3", "-m", "venv", ".venv"], cwd=clone, check=True)
        venv = clone / ".venv/bin"
        env = os.environ | {"PATH": f"{venv}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv.parent)}
        first = timed(f"pip install -q {args.torch_first}", clone, env)[0] if args.torch_first else 0.0
        seconds = {"install_seconds": round(first + timed(install, clone, env)[0], 1),
                   "main_job_seconds": round(timed(run, clone, env)[0], 1)}
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "report.md"):  # kept whatever the tests do
            shutil.copy(clone / "runs/compare" / name, args.out / name)
        status = {}
        if not args.no_tests:
            took, code = timed(tests, clone, env, check=False)
            seconds["test_seconds"], status["tests_exit_status"] = round(took, 1), code
        probe = "import torch; print(torch.__version__, torch.version.cuda or 'cpu')"
        torch_build = subprocess.run([str(venv / "python"), "-c", probe], capture_output=True, text=True,
                                     check=True).stdout.strip()
    minutes = {k.replace("seconds", "minutes"): round(v / 60, 1) for k, v in seconds.items()}
    timing = {**seconds, **minutes, **status, "commands": [install_and_run, tests],
              "torch_first": args.torch_first, "torch": torch_build, "cores": os.cpu_count(),
              "date": date.today().isoformat()}
    (args.out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print(json.dumps(timing, indent=2))


if __name__ == "__main__":
    main()
