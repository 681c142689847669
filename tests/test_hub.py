"""Models shared as folders and Hub repositories (hub.py): every family round-trips bit for
bit, the card holds the metrics, a block travels alone and merges, Hub sources resolve."""

import json
from pathlib import Path

import pytest
import torch

from diffusionblocks import checkpoint, cli, hub
from diffusionblocks.data.images import load_images
from diffusionblocks.tasks import ar, classify, generate, mdm, recurrent

TEXT = "the quick brown fox jumps over the lazy dog. " * 120
LM = ["--width", "16", "--depth", "2", "--heads", "2", "--context", "16", "--batch-size", "8",
      "--steps", "2", "--evals", "1", "--quiet", "--device", "cpu"]
MODULES = {"classify": classify, "generate": generate, "mdm": mdm, "ar": ar, "recurrent": recurrent}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    argvs = {
        "classify": ["train", "classify", "--width", "16", "--depth", "3", "--heads", "2", "--steps", "3",
                     "--evals", "1", "--batch-size", "32", "--quiet", "--ema", "0.9"],
        "generate": ["train", "generate", "--width", "16", "--depth", "3", "--heads", "2", "--steps", "3",
                     "--evals", "1", "--batch-size", "16", "--num-samples", "20", "--feature-steps", "3",
                     "--sample-steps", "2", "--quiet", "--device", "cpu"],
        "mdm": ["train", "mdm", "--data", corpus, "--blocks", "2", *LM, "--num-samples", "2",
                "--bound-passes", "2", "--sample-steps", "2"],
        "ar": ["train", "ar", "--data", corpus, "--blocks", "2", *LM, "--num-samples", "2",
               "--sample-length", "8", "--prompt-length", "4", "--judge-steps", "0"],
        "recurrent": ["train", "recurrent", "--data", corpus, "--width", "16", "--heads", "2",
                      "--context", "16", "--batch-size", "8", "--steps", "2", "--evals", "1", "--quiet",
                      "--device", "cpu", "--prelude", "1", "--core", "1", "--coda", "1", "--mean-depth", "2",
                      "--num-samples", "2", "--sample-length", "8", "--prompt-length", "4",
                      "--judge-steps", "0", "--k-sweep", "1"],
    }
    for task, argv in argvs.items():
        cli.main([str(a) for a in [*argv, "--out", root / task]])
    return {task: root / task for task in argvs}


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return model.state_dict()


@pytest.mark.parametrize("task", list(MODULES))
def test_from_pretrained_of_save_pretrained_is_the_model_bit_for_bit(runs, tmp_path, task):
    folder = hub.save_pretrained(runs[task] / "checkpoint", tmp_path / "shared")
    assert not list(folder.glob("*.pt"))  # no optimizer state, nothing pickled
    mine, cfg = hub.from_pretrained(folder)
    theirs, stored = MODULES[task].load(runs[task] / "checkpoint")
    assert type(mine) is type(theirs) and cfg == stored
    a, b = tensors(mine), tensors(theirs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert hub.from_pretrained(runs[task] / "checkpoint")[1] == stored  # a run's checkpoint too


def test_the_outputs_match_and_the_weight_average_is_what_is_shared(runs, tmp_path):
    folder = hub.save_pretrained(runs["classify"], tmp_path / "shared")  # the run folder works too
    model, cfg = hub.from_pretrained(folder)
    raw, _ = hub.from_pretrained(folder, averaged=False)
    data = load_images("digits")
    x = data.x_test[:64]
    original, _ = classify.load(runs["classify"] / "checkpoint")
    assert torch.equal(classify.predict(model, x, cfg), classify.predict(original, x, cfg))
    assert not torch.equal(classify.predict(raw, x, cfg), classify.predict(model, x, cfg))  # EMA 0.9


def test_the_model_card_holds_the_metrics_and_the_command(runs, tmp_path):
    folder = hub.save_pretrained(runs["classify"] / "checkpoint", tmp_path / "shared")
    card = (folder / "README.md").read_text()
    result = json.loads((runs["classify"] / "result.json").read_text())
    assert "library_name: diffusionblocks" in card
    assert "diffusionblocks train classify --config config.json" in card
    assert f"| test_accuracy | {result['test_accuracy']:.4g} |" in card
    assert "README.md" in json.loads((folder / "manifest.json").read_text())["files"]


def test_a_block_job_travels_alone_and_merges_from_shared_folders(runs, tmp_path, capsys):
    common = ["train", "classify", "--width", "16", "--depth", "3", "--heads", "2", "--steps", "3",
              "--evals", "1", "--batch-size", "32", "--quiet"]
    for b in range(3):
        cli.main([*common, "--block", str(b), "--out", str(tmp_path / "jobs" / f"block_{b}")])
        job = tmp_path / "jobs" / f"block_{b}" / "checkpoint"
        hub.save_pretrained(job, tmp_path / "shared" / f"block_{b}")
    capsys.readouterr()
    shared = [str(tmp_path / "shared" / f"block_{b}") for b in range(3)]
    cli.main(["merge", *shared, "--out", str(tmp_path / "a")])
    cli.main(["merge", *(str(tmp_path / "jobs" / f"block_{b}" / "checkpoint") for b in range(3)),
              "--out", str(tmp_path / "b")])
    one, _ = classify.load(tmp_path / "a" / "checkpoint")
    two, _ = classify.load(tmp_path / "b" / "checkpoint")
    assert all(torch.equal(p, q) for p, q in zip(one.state_dict().values(), two.state_dict().values()))


def test_hub_sources_resolve_to_the_downloaded_subfolder(runs, tmp_path, monkeypatch):
    import huggingface_hub

    repo = tmp_path / "snapshot"
    hub.save_pretrained(runs["ar"] / "checkpoint", repo / "block_all")
    asked = {}

    def fake(**kwargs):
        asked.update(kwargs)
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    model, cfg = hub.from_pretrained("hf:org/tiny-ar/block_all@v1")
    assert asked["repo_id"] == "org/tiny-ar" and asked["revision"] == "v1"
    assert asked["allow_patterns"] == ["block_all/*"] and cfg.mode == "dblocks"
    with pytest.raises(ValueError, match="ORG/NAME"):
        hub.parse("hf:justone")


def test_a_hub_source_without_network_is_one_line(monkeypatch, tmp_path, capsys):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(SystemExit) as info:
        cli.main(["merge", "hf:org/model/block_0", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "could not fetch hf:org/model/block_0" in err


def test_export_writes_the_folder_from_the_cli(runs, tmp_path, capsys):
    capsys.readouterr()
    cli.main(["export", str(runs["mdm"] / "checkpoint"), str(tmp_path / "shared")])
    assert json.loads(capsys.readouterr().out)["folder"] == str(tmp_path / "shared")
    assert checkpoint.read_config(tmp_path / "shared")["task"] == "mdm"
