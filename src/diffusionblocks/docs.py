"""Tables in README and docs rendered from the committed JSON they come from, so a figure copied by
hand cannot drift. A rendered block sits between two markers:

    <!-- table: docs/bench/main_job/report.json compare -->
    | mode | ... |
    <!-- /table -->

A figure in prose sits between two markers naming its JSON, the dotted key of its value (a list
index as a number; a key may hold spaces) and its format (:data:`FORMATS`):

    <!-- fig: docs/controls/cifar10_seeds.json modes.ensemble.test_accuracy pm -->66.67 ± 0.58%<!-- /fig -->

``python -m diffusionblocks.docs`` rewrites every block and figure from its JSON; ``--check``
only reports (exit 1) the files that disagree, which the test suite runs. Kinds: ``compare`` (a
``compare`` report.json: its table), ``seeds`` (a seeds.json of ``compare --seeds`` or
``benchmarks/controls_table.py``: mean ± sd per mode and every seed), ``rows`` (a JSON list of
row objects, or {"columns": [...], "rows": [[...]]}: the rows as they stand).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from .report import comparison_table, markdown_table

MARKER = re.compile(r"(<!-- table: (?P<src>\S+) (?P<kind>\w+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
DOCS = ("README.md", "docs/controls.md", "docs/peers.md", "docs/results.md", "docs/cifar10.md")


def _count(n) -> str:
    return "–" if n is None else f"{n:,}"


def compare(report: dict) -> str:
    """The table of a ``compare`` report (without the lines below it)."""
    return comparison_table(report).split("\n\n")[0].rstrip("\n") + "\n"


def seeds(summary: dict) -> str:
    """Mean ± sd of validation and test accuracy per mode, every seed's test figure, and the
    budget columns when the summary has them."""
    order = [str(s) for s in summary["seeds"]]

    def values(fig) -> list[float]:
        v = fig["seeds"]
        return [v[s] for s in order] if isinstance(v, dict) else list(v)

    def pct(fig) -> str:
        return f"{100 * fig['mean']:.2f} ± {100 * fig['sd']:.2f}%" if fig else "–"

    budget = any("budget" in row for row in summary["modes"].values())
    header = ["mode", "validation", "test", f"test, seeds {', '.join(order)}",
              *(["layer evals (train)", "layers / prediction", "parameters", "activations / step"]
                if budget else [])]
    rows = []
    for mode, row in summary["modes"].items():
        test = row.get("test_accuracy")
        b = row.get("budget", {})
        act = b.get("activation_bytes_per_step")
        rows.append([mode, pct(row.get("val_accuracy")), pct(test),
                     ", ".join(f"{100 * v:.2f}" for v in values(test)) if test else "–",
                     *([_count(b.get("layer_evals")), _count(b.get("inference_layers")),
                        _count(b.get("parameters")), f"{act / 2**20:.1f} MiB" if act else "–"]
                       if budget else [])])
    return markdown_table(rows, header)


def rows(data) -> str:
    """A table kept as data: {"columns": [...], "rows": [[...]]} or a list of row objects."""
    if isinstance(data, dict):
        return markdown_table([[str(c) for c in r] for r in data["rows"]], data["columns"])
    columns = list(data[0])
    return markdown_table([[str(r.get(c, "–")) for c in columns] for r in data], columns)


KINDS = {"compare": compare, "seeds": seeds, "rows": rows}
FIGURE = re.compile(  # one line's marker; a body never runs into another figure's marker
    r"(<!-- fig: (?P<src>\S+) (?P<key>(?:(?!-->)[^\n])+?) (?P<fmt>\w+) -->)(?P<body>(?:(?!<!-- /?fig).)*?)"
    r"(?P<end><!-- /fig -->)", re.S)


def _pm(v) -> str:
    """Mean ± sd in percent, of a {"mean", "sd"} record or of a list of seeds' values."""
    if isinstance(v, dict):
        mean, sd = v["mean"], v["sd"]
    else:
        mean, sd = statistics.mean(v), statistics.stdev(v)
    return f"{100 * mean:.2f} ± {100 * sd:.2f}%"


FORMATS = {
    "pct": lambda v: f"{100 * v:.2f}%",  # a share, in percent
    "pct1": lambda v: f"{100 * v:.1f}%",
    "pm": _pm,
    "f1": lambda v: f"{v:.1f}", "f2": lambda v: f"{v:.2f}", "f3": lambda v: f"{v:.3f}",
    "int": lambda v: f"{round(v):,}",
    "mib": lambda v: f"{v / 2**20:.1f} MiB",  # bytes
    "raw": str,  # as the JSON holds it (a rendered table's cell)
}


def lookup(data, key: str):
    """The value at a dotted ``key`` (``modes.e2e.test_accuracy.seeds.0``)."""
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def render(text: str, root: Path) -> str:
    """``text`` with every marked block rendered from its JSON (paths relative to ``root``)."""
    def source(name: str):
        if not (root / name).is_file():
            raise ValueError(f"a table's or figure's source {name} does not exist")
        return json.loads((root / name).read_text())

    def block(m: re.Match) -> str:
        if m["kind"] not in KINDS:
            raise ValueError(f"unknown table kind {m['kind']!r}; choose one of {', '.join(KINDS)}")
        return m.group(1) + KINDS[m["kind"]](source(m["src"])) + m.group(5)

    def figure(m: re.Match) -> str:
        if m["fmt"] not in FORMATS:
            raise ValueError(f"unknown figure format {m['fmt']!r}; choose one of {', '.join(FORMATS)}")
        data = source(m["src"])
        try:
            text = FORMATS[m["fmt"]](lookup(data, m["key"]))
        except (KeyError, IndexError, ValueError, TypeError, statistics.StatisticsError):
            raise ValueError(f"{m['src']} has no figure {m['key']} to format as {m['fmt']}") from None
        return m.group(1) + text + m["end"]

    return FIGURE.sub(figure, MARKER.sub(block, text))


def stale(root: Path, files=DOCS) -> list[str]:
    """The files whose marked tables or figures disagree with their JSON."""
    def differs(f: str) -> bool:
        text = (root / f).read_text()
        try:
            return render(text, root) != text
        except ValueError:  # a source that is gone: the table cannot be true
            return True

    return [f for f in files if (root / f).is_file() and differs(f)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report stale tables, rewrite nothing")
    ap.add_argument("--root", default=".", help="the repository root")
    args = ap.parse_args(argv)
    root = Path(args.root)
    bad = stale(root)
    if args.check:
        for f in bad:
            print(f"{f}: a table or figure disagrees with its JSON; run python -m diffusionblocks.docs",
                  file=sys.stderr)
        return 1 if bad else 0
    for f in bad:
        (root / f).write_text(render((root / f).read_text(), root))
        print(f"rewrote {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
