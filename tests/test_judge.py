"""The independent judge of generated text: cached once trained, scores text, MAUVE from its features."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from diffusionblocks.data.text import load_text
from diffusionblocks.models.lm import LMConfig
from diffusionblocks.tasks import judge

TEXT = "the quick brown fox jumps over the lazy dog. " * 300


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("judge") / "corpus.txt"
    path.write_text(TEXT)
    return load_text(str(path))


class Killed(Exception):
    pass


SMALL = judge.JudgeConfig(width=32, depth=2, heads=2, context=16, steps=150, batch_size=16, lr=3e-3)


@pytest.fixture(scope="module")
def trained(text, tmp_path_factory):
    cache = tmp_path_factory.mktemp("judges")
    return *judge.load_or_train(text, SMALL, cache_dir=cache, show=False), cache


def test_a_judge_learns_the_text_and_is_cached(text, trained, monkeypatch):
    model, info, cache = trained
    uniform = torch.log2(torch.tensor(float(text.tokenizer.vocab_size))).item()
    assert info["test_bpc"] < 0.5 * uniform  # far from a uniform guess over the characters
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    def no_training(*args, **kwargs):
        raise RuntimeError("a cached judge was trained again")

    monkeypatch.setattr(judge, "fit", no_training)
    again, info_again = judge.load_or_train(text, SMALL, cache_dir=cache, show=False)
    assert info_again == info
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(RuntimeError, match="trained again"):  # other settings: another judge
        judge.load_or_train(text, SMALL.__class__(**{**SMALL.__dict__, "seed": 7}), cache_dir=cache)


def test_judge_scores_real_text_above_shuffled_text_and_mauve_tells_them_apart(text, trained):
    model = trained[0]
    starts = range(0, len(text.test) - 24, 8)
    real = torch.stack([text.test[s : s + 24] for s in starts])
    gen = torch.Generator().manual_seed(0)
    shuffled = torch.stack([torch.cat([r[:8], r[8:][torch.randperm(16, generator=gen)]]) for r in real])
    assert judge.judge_bpc(model, real, 8) < judge.judge_bpc(model, shuffled, 8) - 1
    features = judge.features(model, real, 8)
    assert features.shape == (len(real), SMALL.width)
    same = judge.mauve(features[::2], features[1::2])
    apart = judge.mauve(features, judge.features(model, shuffled, 8))
    assert apart["mauve"] < 0.8 < same["mauve"] and 0 <= apart["mauve_sd"] < 0.2


@pytest.mark.parametrize("prompt_length", [4, 12, 20])  # context 16: scored by the first window, or not
def test_judge_bpc_reads_each_token_with_all_text_before_it_or_at_least_half_a_context(text, trained,
                                                                                     prompt_length):
    model = trained[0]
    ids = torch.stack([text.test[s : s + 40] for s in (0, 13, 50)])

    def window_start(p: int) -> int:  # windows [0, 16), [8, 24), [16, 32), …: the first that holds p
        return 0 if p < 16 else (p - 16) // 8 * 8 + 8

    nats = [torch.nn.functional.cross_entropy(model(ids[:, window_start(p) : p])[:, -1], ids[:, p])
            for p in range(prompt_length, 40)]  # one pass per token: the definition
    expected = torch.stack(nats).mean().item() / math.log(2)
    assert judge.judge_bpc(model, ids, prompt_length) == pytest.approx(expected, rel=1e-5)
    assert all(8 <= p - window_start(p) <= 16 for p in range(16, 40))


def test_features_read_only_the_continuation_and_at_most_the_context(text, trained):
    model = trained[0]
    ids = text.test[:40][None]
    changed = ids.clone()
    changed[0, :20] = (changed[0, :20] + 1) % text.tokenizer.vocab_size  # beyond the context of 16
    assert torch.equal(judge.features(model, ids, 4), judge.features(model, changed, 4))


def test_judge_config_is_twice_the_contestants_width_in_their_precision():
    cfg = judge.judge_config(LMConfig(width=128, heads=4, depth=8, context=128), steps=4000, precision="bf16")
    assert (cfg.width, cfg.heads, cfg.depth, cfg.context, cfg.steps) == (256, 8, 8, 128, 4000)
    assert cfg.precision == "bf16"
    data = SimpleNamespace(tokenizer=SimpleNamespace(kind="char", chars="ab"), train=torch.zeros(4))
    assert judge._key(data, cfg) != judge._key(data, replace(cfg, precision="fp32"))  # cached apart


def test_without_the_mauve_package_the_score_is_none_with_the_reason(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mauve", None)  # an import of it now fails
    result = judge.mauve(torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64))
    assert result["mauve"] is None and "pip install 'diffusionblocks[judge]'" in result["mauve_skipped"]


def test_a_killed_judge_training_resumes_bit_for_bit(text, trained, tmp_path, monkeypatch, capsys):
    save = judge.checkpoint.save

    def save_then_die(directory, parts, config, optimizers, progress):
        save(directory, parts, config, optimizers, progress)
        if progress.step >= 100:
            raise Killed

    monkeypatch.setattr(judge.checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        judge.load_or_train(text, SMALL, cache_dir=tmp_path, show=False)
    monkeypatch.undo()
    starts, real_fit = [], judge.fit

    def fit(strategy, batch_at, total, warmup, seed, progress, **kwargs):
        starts.append(progress.step)
        return real_fit(strategy, batch_at, total, warmup, seed, progress, **kwargs)

    monkeypatch.setattr(judge, "fit", fit)
    capsys.readouterr()
    resumed, info = judge.load_or_train(text, SMALL, cache_dir=tmp_path)
    err = capsys.readouterr().err
    assert starts == [100] and "resuming the judge" in err and "at step 100 of 150" in err
    straight, straight_info = trained[0], trained[1]  # the same judge trained without a stop
    pairs = zip(straight.state_dict().values(), resumed.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)
    assert info["test_bpc"] == straight_info["test_bpc"]
    assert not list(tmp_path.glob("*.partial*"))  # the partial training is gone once the judge is cached


def scripted_validation(monkeypatch, text, scores: list[float], snapshots: list[dict]) -> None:
    """The judge's validation bits come from ``scores`` in turn (its weights at each are kept
    in ``snapshots``); the test split keeps its real score."""
    real, scores = judge.text_bpc, iter(scores)

    def text_bpc(model, ids, batch=64):
        if ids is not text.val:
            return real(model, ids, batch)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(judge, "text_bpc", text_bpc)


def test_the_judge_stops_on_validation_and_keeps_its_best_weights_also_across_a_kill(text, tmp_path,
                                                                                    monkeypatch):
    cfg = replace(SMALL, steps=400, patience=2)  # evaluations every 50 steps
    seen: list[dict] = []
    scripted_validation(monkeypatch, text, [3.0, 2.0, 2.5, 2.6], seen)
    model, info = judge.load_or_train(text, cfg, cache_dir=tmp_path / "straight", show=False)
    assert (info["best_step"], info["trained_steps"], info["val_bpc"]) == (100, 200, 2.0)
    assert len(seen) == 4 and all(torch.equal(v, seen[1][k]) for k, v in model.state_dict().items())
    assert info["test_bpc"] == judge.text_bpc(model, text.test)  # the best weights' score

    save = judge.checkpoint.save

    def save_then_die(directory, parts, config, optimizers, progress):
        save(directory, parts, config, optimizers, progress)
        if progress.step == 150:  # after the best (step 100), before the stop
            raise Killed

    monkeypatch.setattr(judge.checkpoint, "save", save_then_die)
    scripted_validation(monkeypatch, text, [3.0, 2.0, 2.5], [])
    with pytest.raises(Killed):
        judge.load_or_train(text, cfg, cache_dir=tmp_path / "killed", show=False)
    monkeypatch.setattr(judge.checkpoint, "save", save)
    scripted_validation(monkeypatch, text, [2.6], [])  # the resumed run scores step 200 only
    resumed, resumed_info = judge.load_or_train(text, cfg, cache_dir=tmp_path / "killed", show=False)
    assert all(torch.equal(v, seen[1][k]) for k, v in resumed.state_dict().items())
    assert resumed_info == info
