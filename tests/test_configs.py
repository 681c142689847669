"""Experiments as config files: every shipped config dry-runs, files and flags combine in a fixed
order, a run's config.json reproduces it, and settings of the wrong task are refused."""

import json
import pickle
import tomllib

import numpy as np
import pytest
from conftest import REPO

from diffusionblocks import cli
from diffusionblocks.data.images import load_images
from diffusionblocks.data.text import load_text

CONFIGS = sorted((REPO / "configs").glob("*/*.toml"))


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        cli.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def dry_run(argv, capsys) -> dict:
    code, out, err = run([*argv, "--dry-run"], capsys)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_configs_cover_the_paper_and_the_cpu_rows():
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    assert {"paper/vit_cifar100.toml", "paper/dit_cifar10.toml", "paper/mdm_text8.toml",
            "paper/recurrent.toml", "cpu/digits.toml", "cpu/mnist.toml", "cpu/cifar10.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_dry_runs(path, data_dir, capsys):
    task = tomllib.loads(path.read_text())["task"]
    report = dry_run(["train", task, "--config", str(path), "--data-dir", str(data_dir)], capsys)
    assert report["task"] == task and report["parameters"] > 0
    assert sum(report["parameters_per_block"].values()) == report["parameters"]
    assert report["blocks"] >= 1 and report["layers"] >= 1 and report["dataset"]


def test_dit_s2_has_the_published_size(capsys, tmp_path):
    report = dry_run(["train", "generate", "--config", str(REPO / "configs/paper/dit_cifar10.toml"),
                      "--data-dir", str(tmp_path)], capsys)  # no data here: the model part still prints
    assert 29e6 <= report["parameters"] <= 37e6
    assert "data_missing" in report and report["dataset"] == "cifar10"
    assert report["layers"] == 12 and report["blocks"] == 3
    assert len(set(v for k, v in report["parameters_per_block"].items() if k.startswith("block_"))) == 1


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('task = "classify"\ndataset = "digits"\nsteps = 77\n[vit]\nwidth = 32\nheads = 2\n'
                    '[optim]\nlr = 0.002\n')
    cfg = dry_run(["train", "classify", "--config", str(path), "--width", "48"], capsys)["config"]
    assert cfg["steps"] == 77 and cfg["vit"]["width"] == 48 and cfg["vit"]["heads"] == 2
    assert cfg["optim"]["lr"] == 0.002 and cfg["vit"]["depth"] == 6  # the default


def test_a_runs_config_json_reproduces_the_run(tmp_path, capsys):
    argv = ["train", "classify", "--dataset", "digits", "--steps", "6", "--width", "16", "--heads", "2",
            "--depth", "3", "--evals", "1", "--quiet", "--out", str(tmp_path / "a")]
    assert run(argv, capsys)[0] == 0
    again = ["train", "classify", "--config", str(tmp_path / "a" / "config.json"), "--quiet",
             "--out", str(tmp_path / "b")]
    assert run(again, capsys)[0] == 0
    first = json.loads((tmp_path / "a" / "config.json").read_text())
    second = json.loads((tmp_path / "b" / "config.json").read_text())
    assert {**first, "out": None} == {**second, "out": None}
    a = (tmp_path / "a" / "checkpoint" / "block_0.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "checkpoint" / "block_0.safetensors").read_bytes()


@pytest.mark.parametrize("text,why", [
    ('task = "classify"\nguidance = 2.0\n', "'guidance' is not a setting here"),
    ('task = "classify"\n[vit]\nwidht = 3\n', ".toml.vit: 'widht' is not a setting here"),
    ('task = "classify"\nsteps = "many"\n', "expected int"),
    ('task = "classify"\nvit = 3\n', "is a table of settings"),
    ('task = "generate"\n', "is a generate config, not classify"),
    ('task = "classify"\nsteps = [\n', "not valid TOML"),
    ('task = "classify"\n[optim]\nbetas = [0.9]\n', "expected 2 values"),
])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path, capsys, text, why):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, _, err = run(["train", "classify", "--config", str(path), "--dry-run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and why in err


@pytest.mark.parametrize("argv,why", [
    (["--task", "mdm", "--guidance", "2"], "--guidance does not apply to --task mdm"),
    (["--task", "mdm", "--gamma", "0.2"], "--gamma does not apply to --task mdm"),
    (["--data", "x.txt"], "--data does not apply to --task classify"),
    (["--task", "generate", "--decode", "draw"], "--decode does not apply to --task generate"),
    (["--guidance", "0"], "--guidance does not apply to --task classify"),  # a zero is a value too
])
def test_compare_refuses_a_setting_of_another_family(argv, why, capsys):
    code, _, err = run(["compare", "--quick", *argv], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and why in err


def write_cifar100(root, n_train=20, n_test=10):
    folder = root / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [int(v) for v in rng.integers(0, 100, n)], b"coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def test_cifar100_reads_the_python_folder_with_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    data = load_images("cifar100", tmp_path)
    assert data.shape == (3, 32, 32) and len(data.y_train) == 20 and len(data.y_test) == 10
    assert data.num_classes > 10 and int(data.y_train.max()) < 100


def test_cifar100_refuses_a_file_that_would_run_code(tmp_path):
    folder = write_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "train").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(ValueError, match="is not a CIFAR-100 batch"):
        load_images("cifar100", tmp_path)


def test_text8_is_read_by_name_from_the_data_folder(tmp_path):
    (tmp_path / "text8").mkdir()
    (tmp_path / "text8" / "text8").write_text("anarchism originated as a term of abuse " * 50)
    data = load_text("text8", tmp_path)
    assert data.tokenizer.vocab_size <= 27 and len(data.train) == int(0.9 * 2000)


def test_bench_takes_a_config_file_and_refuses_a_foreign_key(tmp_path, capsys):
    path = tmp_path / "bench.toml"
    path.write_text("guidance = 2.0\n")
    code, _, err = run(["bench", "speed", "--config", str(path)], capsys)
    assert code == 2 and "'guidance' is not a setting here" in err


def test_seeds_report_gives_mean_sd_and_every_seed(tmp_path):
    from diffusionblocks.report import seeds_report

    reports = {s: {"e2e": {"test_accuracy": a, "val_accuracy": a - 0.01, "steps": 10, "mode": "e2e"},
                   "dblocks": {"test_accuracy": b, "val_accuracy": b, "steps": 30}}
               for s, a, b in ((0, 0.90, 0.80), (1, 0.92, 0.84), (2, 0.94, 0.82))}
    table = seeds_report(tmp_path, reports)
    saved = json.loads((tmp_path / "seeds.json").read_text())
    e2e = saved["modes"]["e2e"]["test_accuracy"]
    assert e2e["mean"] == pytest.approx(0.92) and e2e["sd"] == pytest.approx(0.02)
    assert e2e["seeds"] == {"0": 0.90, "1": 0.92, "2": 0.94} and "steps" not in saved["modes"]["e2e"]
    assert "| dblocks | test accuracy (%) | 82.00 ± 2.00 | 80.00, 84.00, 82.00 |" in table


def test_compare_refuses_fewer_than_one_seed(capsys):
    code, _, err = run(["compare", "--seeds", "0"], capsys)
    assert code == 2 and "--seeds must be at least 1" in err


@pytest.mark.parametrize("name,task,mode,published", [
    ("dit_cifar10", "generate", "e2e", 33e6),        # DiT-S/2
    ("vit_tinyimagenet", "classify", "e2e", 86e6),   # ViT-B (12 layers of 768)
])
def test_paper_models_are_within_ten_percent_of_their_published_size(name, task, mode, published, capsys):
    report = dry_run(["train", task, "--config", str(REPO / f"configs/paper/{name}.toml"), "--mode", mode],
                     capsys)
    assert abs(report["parameters"] - published) <= 0.1 * published


def write_folder(root, tiny_imagenet=False):
    from PIL import Image

    rng = np.random.default_rng(0)
    image = lambda h, w: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    for split, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            folder = root / split / c / ("images" if split == "train" else "")
            folder.mkdir(parents=True, exist_ok=True)
            if split == "val" and tiny_imagenet:
                continue
            for i in range(n):
                image(40, 30).save(folder / f"{c}{i}.png")
    if tiny_imagenet:  # val/images + val_annotations.txt, as the Tiny-ImageNet archive
        (root / "val" / "images").mkdir(parents=True)
        lines = []
        for i, c in enumerate(("dog", "cat", "dog")):
            image(64, 64).save(root / "val/images" / f"v{i}.png")
            lines.append(f"v{i}.png\t{c}\t0\t0\t10\t10")
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("tiny_imagenet", [False, True])
def test_an_image_folder_is_read_by_class_and_resized(tmp_path, monkeypatch, tiny_imagenet):
    pytest.importorskip("PIL")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_folder(tmp_path / "set", tiny_imagenet)
    data = load_images(f"folder:{tmp_path / 'set'}", size=16)
    assert data.shape == (3, 16, 16) and data.num_classes == 2
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1]  # cat, dog: sorted class names
    assert data.y_test.tolist() == ([1, 0, 1] if tiny_imagenet else [0, 0, 1, 1])
    again = load_images(f"folder:{tmp_path / 'set'}", size=16)  # from the cache
    assert (again.x_train == data.x_train).all()


def test_train_help_lists_the_flags_of_the_chosen_method_in_sections(capsys):
    from diffusionblocks import cli

    def help_of(*argv) -> str:
        with pytest.raises(SystemExit):
            cli.main(["train", "classify", *argv, "--help"])
        return capsys.readouterr().out

    default, e2e, ensemble = help_of(), help_of("--mode", "e2e"), help_of("--mode", "ensemble")
    assert len(default.splitlines()) < 120
    for section in ("model:", "noise (DiffusionBlocks):", "optimizer:", "method:", "data:", "run:"):
        assert f"\n{section}\n" in default
    assert "--sigma-min" in default and "--sigma-min" not in e2e and "--label-error" not in ensemble
    assert "--member" in ensemble and "--member" not in default and "--combine" not in e2e
    flat = {name: " ".join(text.split()) for name, text in (("e2e", e2e), ("default", default))}
    assert "e2e: plain backprop" in flat["e2e"] and "dblocks: DiffusionBlocks" in flat["default"]
    assert "σ_min (default: 2.0)" in flat["default"]  # the family's noise, not NoiseConfig's 0.002
    with pytest.raises(SystemExit):
        cli.main(["train", "generate", "--help"])
    generate = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.999)" in generate and "rate (AdamW) (default: 0.001)" in generate  # its own optimizer
