"""Replays the hostile probes of issue 17, one test per failure: nothing overwritten, nothing
unpickled, no garbage accepted, one line and exit code 2 for every bad input."""

import hashlib
import json
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusionblocks import checkpoint, cli
from diffusionblocks.data.images import load_images
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.tasks import classify
from diffusionblocks.tasks.classify import ClassifyConfig

TINY = ["train", "classify", "--dataset", "digits", "--width", "16", "--depth", "3", "--heads", "2",
        "--steps", "10", "--evals", "1", "--batch-size", "32", "--quiet"]


def train(argv) -> None:
    cli.main([str(a) for a in argv])


def refused(argv, capsys, *words) -> str:
    """Run the CLI; it must exit 2 with one line on stderr holding every one of ``words``."""
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run (its folder holds checkpoint, config and metrics)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    cli.main([*TINY, "--out", str(out)])
    return out


@pytest.fixture
def copy_of(run, tmp_path):
    import shutil

    def make(name="copy"):
        return Path(shutil.copytree(run, tmp_path / name))
    return make


# --- 1-4, 15, 16: data loss ------------------------------------------------------------------


def test_1_merge_into_a_finished_run_is_refused_and_touches_nothing(run, capsys):
    before = fingerprint(run)
    refused(["merge", run / "checkpoint", "--out", run], capsys, "not an empty folder")
    assert fingerprint(run) == before


def test_1_merge_takes_the_lock_of_its_out(run, tmp_path, monkeypatch):
    held = []
    original = checkpoint.exclusive

    def spy(directory):
        held.append(Path(directory))
        return original(directory)

    monkeypatch.setattr(checkpoint, "exclusive", spy)
    cfg = checkpoint.read_config(run / "checkpoint")
    assert cfg["mode"] == "dblocks"
    classify.merge([run / "checkpoint"], tmp_path / "merged")
    assert held == [tmp_path / "merged"] and (tmp_path / "merged" / "checkpoint" / "manifest.json").exists()


def test_2_train_into_a_checkpoint_folder_is_refused(run, capsys):
    before = fingerprint(run)
    refused([*TINY, "--width", "32", "--out", run / "checkpoint"], capsys, "is a checkpoint",
            f"give its folder ({run})")
    assert fingerprint(run) == before


@pytest.mark.parametrize("damage", ["no config", "no progress", "checkpoint is a file"])
def test_3_a_checkpoint_that_cannot_be_resumed_is_refused_not_restarted(copy_of, capsys, damage):
    out = copy_of()
    ckpt = out / "checkpoint"
    if damage == "no config":
        (ckpt / "config.json").unlink()
    elif damage == "no progress":
        (ckpt / "progress.json").unlink()
        (ckpt / "manifest.json").unlink()  # as if written before manifests
    else:
        import shutil

        shutil.rmtree(ckpt)
        ckpt.write_text("not a folder")
    before = fingerprint(out)
    refused([*TINY, "--steps", "20", "--out", out], capsys, "give a fresh --out")
    assert fingerprint(out) == before  # weights, optimizer state and metrics all kept


def test_15_a_lock_whose_pid_was_reused_does_not_block(copy_of):
    out = copy_of()
    (out / ".lock").write_text(str(os.getppid()))  # a live, unrelated process (after a reboot)
    train([*TINY, "--steps", "20", "--out", out])
    assert checkpoint.read_progress(out / "checkpoint").step == 60  # B × 20 block steps


def test_16_an_offload_folder_left_by_a_killed_run_is_removed(copy_of):
    out = copy_of()
    (out / "offload").mkdir()
    (out / "offload" / "block_0.safetensors").write_bytes(b"left by a killed --offload disk run")
    train([*TINY, "--steps", "20", "--out", out])
    assert not (out / "offload").exists()


# --- 5: no code runs from a data folder -------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cifar_folder(root: Path, batch) -> Path:
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(batch(name), f)
    return folder


def test_5_a_crafted_pickle_in_a_cifar_folder_does_not_run(tmp_path):
    marker = tmp_path / "executed"
    _cifar_folder(tmp_path, lambda name: {b"data": _Payload(marker), b"labels": [0]})
    with pytest.raises(ValueError, match=r"data_batch_1 is not a CIFAR-10 batch .*os.system|posix.system"):
        load_images("cifar10", tmp_path)
    assert not marker.exists()


def test_5_a_real_cifar_batch_still_loads(tmp_path):
    rng = np.random.default_rng(0)
    _cifar_folder(tmp_path, lambda name: {
        b"batch_label": name.encode(), b"labels": list(range(10)) * 2,
        b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8)})
    data = load_images("cifar10", tmp_path)
    assert data.x_train.shape == (100, 3, 32, 32) and len(data.y_test) == 20


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage",
                                     pickle.dumps({b"data": [1, 2], b"labels": [0]})])
def test_12_a_malformed_cifar_batch_is_one_line(tmp_path, capsys, content):
    _cifar_folder(tmp_path, lambda name: {})
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_1").write_bytes(content)
    refused([*TINY, "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "r"], capsys,
            "data_batch_1 is not a CIFAR-10 batch")


# --- 6, 14: garbage numbers -------------------------------------------------------------------


@pytest.mark.parametrize("flags, words", [
    (["--p-std", "nan"], "p_std must be a finite number"),
    (["--p-mean", "inf"], "p_mean must be a finite number"),
    (["--sigma-data", "nan"], "sigma_data must be a finite number"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--max-weight", "inf"], "max_weight must be a finite number"),
    (["--sigma-max", "inf"], "sigma_max must be a finite number"),
    (["--clip", "-1"], "clip must be ≥ 0"),
    (["--weight-decay", "-5"], "weight_decay must be ≥ 0"),
    (["--patch-size", "0"], "patch_size must be at least 1"),
    (["--lr", "0"], "lr must be positive"),
])
def test_6_garbage_numbers_are_refused_before_training(tmp_path, capsys, flags, words):
    refused([*TINY, *flags, "--out", tmp_path / "r"], capsys, words)
    assert not (tmp_path / "r" / "checkpoint").exists()


def test_6_a_diverging_run_stops_with_one_line_and_no_bare_nan(tmp_path, capsys):
    refused([*TINY, "--lr", "1e30", "--clip", "0", "--out", tmp_path / "r"], capsys, "training diverged")
    for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))


def test_6_metrics_lines_are_json_even_for_a_diverged_metric():
    from diffusionblocks.runs import json_line

    nan, inf = float("nan"), float("inf")
    line = json_line({"step": 3, "fid": nan, "bpc": [1.5, inf], "per": {"a": -inf}})
    assert json.loads(line) == {"step": 3, "fid": None, "bpc": [1.5, None], "per": {"a": None}}


@pytest.mark.parametrize("argv, words", [
    (["generate", "{ckpt}", "--length", "-5"], "--length and --num must be at least 1"),
    (["generate", "{ckpt}", "--num", "0"], "--length and --num must be at least 1"),
    (["bench", "speed", "--threads", "0"], "threads must be at least 1"),
    (["sample", "{ckpt}", "--per-class", "-2"], "--per-class must be at least 1"),
    (["sample", "{ckpt}", "--out", "x.xyz"], "give an image file name ending in .png"),
    (["sample", "{ckpt}"], "is a classify checkpoint; `sample` draws images from `train generate`"),
    (["eval", "fid", "{ckpt}"], "is a classify checkpoint; FID scores image generators"),
])
def test_12_14_bad_arguments_are_one_line(run, capsys, argv, words):
    refused([a.format(ckpt=run / "checkpoint") for a in argv], capsys, words)


def test_14_non_utf8_text_names_the_file(tmp_path, capsys):
    text = tmp_path / "latin1.txt"
    text.write_bytes("caf\xe9 ".encode("latin-1") * 400)
    refused(["train", "ar", "--data", text, "--out", tmp_path / "r", "--steps", "2"], capsys,
            f"{text} is not UTF-8 text (byte 0xe9")


def test_12_hf_data_without_the_datasets_package_is_one_line(tmp_path, capsys):
    try:
        import datasets  # noqa: F401
        pytest.skip("the datasets package is installed")
    except ImportError:
        pass
    refused(["train", "ar", "--data", "hf:wikitext", "--out", tmp_path / "r"], capsys,
            "needs the `datasets` package")


# --- 7, 8, 10, 13: checkpoints read whole, checked, and named when damaged ---------------------


def test_7_a_load_beside_a_concurrent_save_never_mixes_two_checkpoints(tmp_path):
    cfg = ClassifyConfig(dataset="digits", vit=ViTConfig(width=16, depth=3, heads=2, image_size=8,
                                                         channels=1, patch_size=2))
    models = []
    for value in (0.0, 1.0):
        model = classify.build(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        models.append(model)
    ckpt = tmp_path / "checkpoint"
    checkpoint.save(ckpt, models[0].parts(), cfg.to_dict())
    stop = threading.Event()

    def keep_saving():
        i = 0
        while not stop.is_set():
            i += 1
            checkpoint.save(ckpt, models[i % 2].parts(), cfg.to_dict())

    saver = threading.Thread(target=keep_saving)
    saver.start()
    try:
        for _ in range(150):
            model, _ = checkpoint.load_model(ckpt, ClassifyConfig.from_dict, classify.build)
            values = {float(p.detach().flatten()[0]) for p in model.parameters()}
            assert len(values) == 1, values  # all parts from one checkpoint
    finally:
        stop.set()
        saver.join()


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flipped byte":
        i = len(data) - 5
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x00garbage{")
    elif how == "bad header":
        path.write_bytes((10**9).to_bytes(8, "little") + data[8:])


@pytest.mark.parametrize("legacy", [False, True], ids=["manifest", "no manifest"])
@pytest.mark.parametrize("file, how", [
    ("block_1.safetensors", "flipped byte"), ("block_1.safetensors", "truncated"),
    ("block_1.safetensors", "empty"), ("block_1.safetensors", "bad header"),
    ("config.json", "garbage"), ("progress.json", "garbage"),
])
def test_8_10_13_a_damaged_checkpoint_is_named_not_loaded(copy_of, capsys, file, how, legacy):
    out = copy_of()
    ckpt = out / "checkpoint"
    if legacy:
        (ckpt / "manifest.json").unlink()
        if how == "flipped byte":
            pytest.skip("without a manifest, flipped bytes in tensor data are undetectable")
    _damage(ckpt / file, how)
    before = fingerprint(out)
    command = ["eval", ckpt] if file != "progress.json" else [*TINY, "--steps", "20", "--out", out]
    err = refused(command, capsys, file if not legacy or file != "config.json" else "config.json")
    assert "damaged" in err or "not valid JSON" in err or "does not match" in err, err
    assert fingerprint(out) == before


@pytest.mark.parametrize("edit, words", [
    (lambda c: c | {"blocks": "three"}, "config.json is damaged or of another version"),
    (lambda c: c | {"vit": [1, 2]}, "config.json is damaged or of another version"),
    (lambda c: c | {"a_later_field": 1}, None),  # a later version's key: ignored
])
def test_10_a_config_of_wrong_types_is_one_line_and_extra_keys_are_ignored(copy_of, capsys, edit, words):
    ckpt = copy_of() / "checkpoint"
    (ckpt / "config.json").write_text(json.dumps(edit(json.loads((ckpt / "config.json").read_text()))))
    (ckpt / "manifest.json").unlink()
    if words:
        refused(["eval", ckpt], capsys, words)
    else:
        cli.main(["eval", str(ckpt)])
        assert json.loads(capsys.readouterr().out)["test_accuracy"] > 0


def test_10_a_truncated_optimizer_state_refuses_resume(copy_of, capsys):
    out = copy_of()
    (out / "checkpoint" / "manifest.json").unlink()
    _damage(out / "checkpoint" / "block_0.optim.pt", "truncated")
    refused([*TINY, "--steps", "20", "--out", out], capsys, "block_0.optim.pt is damaged")


def test_13_a_garbage_metrics_log_does_not_block_resume(copy_of):
    out = copy_of()
    with (out / "metrics.jsonl").open("a") as f:
        f.write("\x00\x01 not json\n{\"half\": \n")
    train([*TINY, "--steps", "20", "--out", out])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 60


# --- 9, 11: workers and writers ---------------------------------------------------------------


def test_9_a_benchmark_worker_error_reaches_the_user():
    from diffusionblocks.bench import BenchConfig, _timed

    cfg = BenchConfig(dataset="digits", depth=2, width=16, blocks=[2], steps=1, warmup=0, device="cuda:7")
    with pytest.raises(ValueError, match=r"a benchmark worker failed: device 'cuda:7' asked for|"
                                         r"a benchmark worker failed: .*cuda"):
        _timed(cfg, 2, [[0], [1]], 1)


def test_9_bench_parallel_with_missing_data_is_one_line(tmp_path, capsys):
    refused(["bench", "parallel", "--dataset", "mnist", "--data-dir", tmp_path, "--out", tmp_path / "b"],
            capsys, "mnist")


def test_11_an_out_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    refused([*TINY, "--out", tmp_path / "file"], capsys, "is a file; give a folder")
    refused([*TINY, "--out", tmp_path / "file" / "sub"], capsys, "cannot write to --out")


def test_11_a_full_disk_keeps_the_old_checkpoint_and_leaves_no_temp(run, tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    ckpt = checkpoint.save(tmp_path / "checkpoint", {"p": torch.nn.Linear(2, 2)}, {"task": "x"})
    before = fingerprint(ckpt)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    assert safetensors.torch.save_file is not full
    with pytest.raises(OSError, match="could not write checkpoint .*No space left on device"):
        checkpoint.save(ckpt, {"p": torch.nn.Linear(2, 2)}, {"task": "x"})
    assert fingerprint(ckpt) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_11_a_checkpoint_write_failing_inside_a_library_is_one_line_too(tmp_path, monkeypatch):
    ckpt = checkpoint.save(tmp_path / "checkpoint", {"p": torch.nn.Linear(2, 2)}, {"task": "x"})

    def full(*args, **kwargs):
        raise RuntimeError("Error while serializing: IoError(File too large)")  # safetensors' own

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(OSError, match="could not write checkpoint .*File too large"):
        checkpoint.save(ckpt, {"p": torch.nn.Linear(2, 2)}, {"task": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_3_a_resume_with_other_flags_names_the_nested_field_first(copy_of, capsys):
    refused([*TINY, "--ema", "0.9", "--out", copy_of()], capsys,
            "optim.ema: checkpoint 0.0 vs now 0.9", "resume with the same flags")


# --- issue 35, item 8: the last nine bad inputs, and one mode for a checkpoint's files ---------

TEXT35 = "the quick brown fox jumps over the lazy dog. " * 120
TEXT_FLAGS = ["--width", "16", "--depth", "2", "--heads", "2", "--blocks", "2", "--context", "16",
              "--batch-size", "8", "--steps", "2", "--evals", "1", "--quiet", "--device", "cpu"]
AR_FLAGS = [*TEXT_FLAGS, "--num-samples", "2", "--sample-length", "8", "--prompt-length", "4",
            "--judge-steps", "0"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny trained runs of every kind the probes need, each ``NAME -> OUT/checkpoint``."""
    root = tmp_path_factory.mktemp("probes35")
    corpus, other = root / "corpus.txt", root / "other.txt"
    corpus.write_text(TEXT35)
    other.write_text("ZYXW vuts 0123 " * 400)  # another character set: another vocabulary
    runs = {
        "ar": ["train", "ar", "--mode", "e2e", "--data", corpus, *AR_FLAGS],
        "ar_dblocks": ["train", "ar", "--mode", "dblocks", "--data", corpus, *AR_FLAGS],
        "ar_other_vocab": ["train", "ar", "--mode", "e2e", "--data", other, *AR_FLAGS],
        "mdm": ["train", "mdm", "--data", corpus, *TEXT_FLAGS, "--num-samples", "2", "--bound-passes", "2",
                "--sample-steps", "2"],
        "classify": [*TINY[:-5], "--steps", "2", "--evals", "1", "--quiet"],
    }
    for name, argv in runs.items():
        train([*argv, "--out", root / name])
    generate = root / "generate" / "checkpoint"  # `eval` refuses --judge from the config alone
    generate.mkdir(parents=True)
    (generate / "config.json").write_text(json.dumps({"task": "generate"}))
    return {name: root / name / "checkpoint" for name in runs} | {"generate": generate}


def test_35_a_judge_must_be_an_end_to_end_next_token_model(checkpoints, capsys):
    refused(["eval", checkpoints["ar"], "--judge", checkpoints["ar_dblocks"]], capsys,
            "is a dblocks checkpoint", "an end-to-end model")


def test_35_a_judge_must_read_the_contestants_vocabulary(checkpoints, capsys):
    refused(["eval", checkpoints["ar"], "--judge", checkpoints["ar_other_vocab"]], capsys,
            "reads another vocabulary", "must share the contestant's tokens")


@pytest.mark.parametrize("task", ["mdm", "classify", "generate"])
def test_35_judge_is_refused_where_it_does_not_apply(checkpoints, capsys, task):
    refused(["eval", checkpoints[task], "--judge", checkpoints["ar"]], capsys,
            "--judge", "applies to ar and recurrent checkpoints", f"is a {task} checkpoint")


def test_35_a_binary_config_names_the_file(tmp_path, capsys):
    config = tmp_path / "weights.toml"
    config.write_bytes(bytes(range(128, 256)) * 4)
    refused(["train", "classify", "--config", config, "--dry-run"], capsys,
            f"--config {config} is not a text file")


@pytest.mark.parametrize("content", [bytes(range(128, 256)), b'{"version": "1.0", "model": broken'])
def test_35_a_corrupt_tokenizer_json_names_the_file(tmp_path, capsys, content):
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_bytes(content)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT35)
    refused(["train", "ar", "--data", corpus, "--tokenizer", tokenizer, *AR_FLAGS, "--out", tmp_path / "r"],
            capsys, f"tokenizer file {tokenizer} is not a tokenizer.json")


def test_35_init_from_a_checkpoint_of_another_task_names_the_task(checkpoints, tmp_path, capsys):
    refused([*TINY, "--init-from", checkpoints["ar"], "--out", tmp_path / "r"], capsys,
            "holds a checkpoint of `train ar`", "needs one of `train classify`")


def test_35_a_prompt_longer_than_the_sample_names_its_length(checkpoints, capsys):
    refused(["generate", checkpoints["mdm"], "--prompt", "the fox " * 12_500, "--length", "16"], capsys,
            "the prompt is 100,000 tokens long", "--length 16 leaves room for at most 15")


def test_35_every_file_of_a_checkpoint_has_the_umasks_mode(checkpoints):
    mode = 0o666 & ~_umask()
    files = list(checkpoints["classify"].iterdir())
    assert {f.suffix for f in files} >= {".safetensors", ".json", ".pt"}
    assert {f.stat().st_mode & 0o777 for f in files} == {mode}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
