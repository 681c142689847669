"""The README's and docs' rendered tables agree with the committed JSON they come from, and the
check bites when a figure is edited by hand."""

import json
import shutil
from pathlib import Path

from diffusionblocks import docs

ROOT = Path(__file__).resolve().parents[1]


def test_every_rendered_table_matches_its_json():
    assert docs.stale(ROOT) == []
    marked = sum((ROOT / f).read_text().count("<!-- table: ") for f in docs.DOCS if (ROOT / f).is_file())
    assert marked >= 3  # the main job's table and the controls' tables at least


def test_a_figure_edited_by_hand_is_caught_and_rewritten(tmp_path):
    readme_text = (ROOT / "README.md").read_text()
    sources = {m["src"] for pattern in (docs.MARKER, docs.FIGURE) for m in pattern.finditer(readme_text)}
    for name in ("README.md", *sources):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    readme = tmp_path / "README.md"
    text = readme.read_text()
    line = next(row for row in text.splitlines() if row.startswith("| dblocks | 3 |"))  # the main job's
    cells = line.split(" | ")
    edited = " | ".join([*cells[:3], "99.99%" if cells[3] != "99.99%" else "99.98%", *cells[4:]])
    readme.write_text(text.replace(line, edited))
    assert docs.stale(tmp_path, ["README.md"]) == ["README.md"]
    assert docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert docs.main(["--root", str(tmp_path)]) == 0 and readme.read_text() == text


def test_rows_tables_render_as_data():
    table = docs.rows({"columns": ["method", "test"], "rows": [["e2e", "98.1%"]]})
    assert table == "| method | test |\n|---|---|\n| e2e | 98.1% |\n"


def test_a_prose_figure_edited_by_hand_is_caught_and_rewritten(tmp_path):
    (tmp_path / "r.json").write_text('{"modes": {"e2e": {"test": {"mean": 0.6584, "sd": 0.01856}}}, '
                                     '"runs": [{"fid": 9.0612}], "odd key": {"a b": 0.5}}')
    text = ("score <!-- fig: r.json modes.e2e.test pm -->65.84 ± 1.86%<!-- /fig --> and FID "
            "<!-- fig: r.json runs.0.fid f2 -->9.06<!-- /fig --> at "
            "<!-- fig: r.json odd key.a b pct -->50.00%<!-- /fig -->")
    (tmp_path / "README.md").write_text(text)
    assert docs.stale(tmp_path, ["README.md"]) == []
    (tmp_path / "README.md").write_text(text.replace("9.06<", "8.99<"))
    assert docs.stale(tmp_path, ["README.md"]) == ["README.md"]
    assert docs.main(["--root", str(tmp_path)]) == 0 and (tmp_path / "README.md").read_text() == text
    unclosed = "<!-- fig: r.json runs.0.fid f2 -->9.06 and <!-- fig: r.json runs.0.fid f1 -->9.1<!-- /fig -->"
    (tmp_path / "README.md").write_text(unclosed)  # a figure without its end leaves the next alone
    assert docs.main(["--root", str(tmp_path)]) == 0 and (tmp_path / "README.md").read_text() == unclosed
    for wrong in ("runs.3.fid f2", "runs.0.fid f9", "runs pm"):  # no such figure or format; a bad one
        (tmp_path / "README.md").write_text(f"<!-- fig: r.json {wrong} -->1<!-- /fig -->")
        assert docs.stale(tmp_path, ["README.md"]) == ["README.md"]


def test_the_readme_first_screen_figures_are_rendered():
    first = (ROOT / "README.md").read_text().split("## What you get")[0]
    assert first.count("<!-- fig: ") >= 4


def test_the_summaries_the_readme_renders_are_read_from_their_runs_json(tmp_path, monkeypatch):
    """benchmarks/controls_summary.py and budget_curves.py, run again, give the committed tables."""
    import runpy
    import sys

    monkeypatch.chdir(ROOT)
    for script, name in (("controls_summary", "summary.json"), ("budget_curves", "budget_curves")):
        out = tmp_path / name
        monkeypatch.setattr(sys, "argv", [script, "--out", str(out)])
        runpy.run_path(str(ROOT / "benchmarks" / f"{script}.py"), run_name="__main__")
        fresh = out if out.suffix else out.with_suffix(".json")
        committed = ROOT / "docs/controls" / fresh.name
        assert json.loads(fresh.read_text())["rows"] == json.loads(committed.read_text())["rows"], script


def test_the_language_model_budget_tables_are_their_points(tmp_path, monkeypatch):
    """benchmarks/lm_controls_table.py, run again with no runs, gives the committed tables from
    their kept points: no row is edited by hand."""
    import runpy
    import shutil
    import sys

    monkeypatch.chdir(ROOT)
    for family in ("mdm", "ar"):
        shutil.copy(ROOT / f"docs/controls/lm_{family}.json", tmp_path / f"lm_{family}.json")
    monkeypatch.setattr(sys, "argv", ["lm_controls_table", "--runs", str(tmp_path / "none"),
                                      "--out", str(tmp_path / "lm")])
    runpy.run_path(str(ROOT / "benchmarks" / "lm_controls_table.py"), run_name="__main__")
    for family in ("mdm", "ar"):
        fresh = json.loads((tmp_path / f"lm_{family}.json").read_text())
        committed = json.loads((ROOT / f"docs/controls/lm_{family}.json").read_text())
        assert fresh["rows"] == committed["rows"] and fresh["points"] == committed["points"], family
