"""Language models: text data, the masked-diffusion bound and sampler, the autoregressive mask,
cached generation, training behaviour and the CLI."""

import json
import math

import pytest
import torch

from diffusionblocks import cli
from diffusionblocks.data.text import Tokenizer, Windows, load_text
from diffusionblocks.models.lm import KVCache, LMConfig, causal_mask, denoising_mask
from diffusionblocks.noise import scalings
from diffusionblocks.sampling import sample_euler
from diffusionblocks.tasks import ar, mdm
from diffusionblocks.tasks.text import windows
from diffusionblocks.training import Blockwise, OptimConfig, step_generator

TEXT = "the quick brown fox jumps over the lazy dog. " * 200 + "pack my box with five dozen jugs!\n" * 100


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def text(text_file):
    return load_text(str(text_file))


def tiny_lm(vocab: int, **overrides) -> LMConfig:
    return LMConfig(**({"vocab_size": vocab, "context": 16, "width": 32, "depth": 4, "heads": 2} | overrides))


# --- data ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_tokenizer_round_trips(kind):
    sample = "To be, or not to be:\nthat is the question. Ünïcödé"
    tok = Tokenizer.fit(kind, sample)
    assert tok.decode(tok.encode(sample)) == sample
    assert Tokenizer.from_dict(tok.to_dict()).encode(sample).tolist() == tok.encode(sample).tolist()
    assert tok.vocab_size == (len(set(sample)) if kind == "char" else 256)


def test_char_tokenizer_refuses_unknown_characters():
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        Tokenizer.fit("char", "abc").encode("abd")


def test_splits_are_contiguous_and_cover_the_text(text):
    tok = text.tokenizer
    assert tok.decode(torch.cat([text.train, text.val, text.test])) == TEXT
    assert len(text.train) == int(0.9 * len(TEXT))


def test_missing_text_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="Any UTF-8 text file works"):
        load_text(str(tmp_path / "absent.txt"))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_text("tinyshakespeare", tmp_path)


def test_tiny_shakespeare_loads(data_dir):
    data = load_text("tinyshakespeare", data_dir)
    assert data.tokenizer.vocab_size == 65
    assert len(data.train) + len(data.val) + len(data.test) == 1_115_394


def test_windows_cover_every_token_once():
    ids = torch.arange(50)
    assert torch.cat(windows(ids, 16)).tolist() == ids.tolist()
    pieces = windows(ids, 17, overlap=1)  # autoregressive evaluation: targets are ids[1:]
    assert torch.cat([p[1:] for p in pieces]).tolist() == ids[1:].tolist()


def test_training_windows_are_reproducible_per_step(text):
    a, b = Windows(text.train, 4, 16, seed=3), Windows(text.train, 4, 16, seed=3)
    assert torch.equal(a(7), b(7)) and not torch.equal(a(7), a(8))


# --- masked diffusion --------------------------------------------------------------------------


def test_mdm_intervals_and_routing_follow_equal_drops_in_alpha():
    model = mdm.MaskedDiffusion(tiny_lm(10, depth=6), blocks=3)
    bounds = [t for b in range(3) for t in model.interval(b)]
    assert bounds == pytest.approx([2 / 3, 1, 1 / 3, 2 / 3, 0, 1 / 3])
    assert [model.route(t) for t in (1.0, 0.9, 2 / 3, 0.5, 1 / 3, 0.1, 0.0)] == [0, 0, 1, 1, 2, 2, 2]


def test_mdm_bound_of_uniform_logits_is_log2_vocab():
    """With all-zero logits every masked token costs ln V, and (1/t)·E[#masked] = T: the bound
    is exactly log2 V in expectation, whatever the masks."""
    model = mdm.MaskedDiffusion(tiny_lm(12), blocks=2)
    for blk in model.blocks:
        torch.nn.init.zeros_(blk.adapter.head.weight)
        torch.nn.init.zeros_(blk.adapter.head.bias)
    pieces = windows(torch.randint(12, (16 * 40 + 5,)), 16)
    bpc, stderr = mdm.bound(model, pieces, passes=64)
    assert 0 < stderr < 0.1
    assert abs(bpc - math.log2(12)) < 4 * stderr


def test_mdm_bound_over_blocks_sums_each_interval_with_its_own_block():
    """B identical blocks must give the end-to-end (B = 1) bound of that network: the per-interval
    integrals add up to the whole one."""
    e2e = mdm.MaskedDiffusion(tiny_lm(12, depth=2), blocks=1)
    three = mdm.MaskedDiffusion(tiny_lm(12, depth=6), blocks=3)
    for blk in three.blocks:
        blk.load_state_dict(e2e.blocks[0].state_dict())
    for p in e2e.parameters():
        p.data += 0.05 * torch.randn_like(p)  # non-trivial logits …
    for blk in three.blocks:
        blk.load_state_dict(e2e.blocks[0].state_dict())  # … in both models
    pieces = windows(torch.randint(12, (16 * 30,)), 16)
    assert mdm.bound(three, pieces, 4, seed=1) == pytest.approx(mdm.bound(e2e, pieces, 4, seed=1), rel=1e-5)


def test_mdm_block_step_moves_only_its_block(text):
    model = mdm.MaskedDiffusion(tiny_lm(text.tokenizer.vocab_size, depth=6), blocks=3)
    strategy = Blockwise(model, OptimConfig(lr=1e-2), loss=mdm.masked_loss)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y = Windows(text.train, 8, 16, 0)(0)
    record = strategy.step(y, y, step_generator(0, 0))
    b = record["block"]
    for name, p in model.named_parameters():
        if int(name.split(".")[1]) != b:
            assert p.grad is None and torch.equal(p, before[name]), name
    active = dict(model.blocks[b].named_parameters())
    assert all(p.grad is not None for p in active.values())
    assert sum(not torch.equal(p, before[f"blocks.{b}.{n}"]) for n, p in active.items()) > len(active) // 2
    assert record["layers"] == 2


def test_mdm_sampler_keeps_the_prompt_and_unmasks_everything():
    model = mdm.MaskedDiffusion(tiny_lm(10, depth=3), blocks=3).eval()
    prompt = torch.tensor([1, 2, 3])
    out = mdm.sample(model, 2, 12, 6, torch.Generator().manual_seed(0), prompt=prompt)
    assert out.shape == (2, 12) and (out[:, :3] == prompt).all()
    assert (out < 10).all()  # no [MASK] left
    again = mdm.sample(model, 2, 12, 6, torch.Generator().manual_seed(0), prompt=prompt)
    assert torch.equal(out, again)


def test_mdm_resume_equals_an_uninterrupted_run(text_file, tmp_path):
    base = dict(data=str(text_file), device="cpu", batch_size=4, evals=2, bound_passes=2, blocks=2,
                num_samples=1, sample_length=8, sample_steps=4, lm=tiny_lm(1, context=16))
    whole = mdm.train(mdm.MDMConfig(steps=8, out=str(tmp_path / "a"), **base), show=False, evaluate=False)
    mdm.train(mdm.MDMConfig(steps=4, out=str(tmp_path / "b"), **base), show=False, evaluate=False)
    resumed = mdm.train(mdm.MDMConfig(steps=8, out=str(tmp_path / "b"), **base), show=False, evaluate=False)
    assert whole["steps"] == resumed["steps"] == 16
    a, _ = mdm.load(tmp_path / "a" / "checkpoint")
    b, _ = mdm.load(tmp_path / "b" / "checkpoint")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


# --- autoregressive ----------------------------------------------------------------------------


def test_denoising_mask_by_hand():
    m = denoising_mask(3).int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0],
                 [1, 0, 0, 1, 0, 0],
                 [1, 1, 0, 0, 1, 0],
                 [1, 1, 1, 0, 0, 1]]


def ar_model(vocab=11, blocks=2, **overrides):
    cfg = ar.ARConfig(blocks=blocks, prompt_length=4, lm=tiny_lm(vocab), device="cpu", **overrides)
    model = ar.build(cfg).eval()
    for p in model.parameters():  # AdaLN-Zero starts as the identity: give every path weight
        p.data += 0.2 * torch.randn_like(p)
    return model, cfg


def test_noisy_slot_never_sees_its_answer_or_later_tokens():
    """Slot k denoises token i = k + 1. Changing clean token i or any later one, or another slot's
    noisy input, leaves slot k's output unchanged; changing a token before i changes it."""
    model, _ = ar_model()
    x = torch.randint(11, (1, 12))
    z = torch.randn(1, 12, model.shared.embed_dim)
    k = 6

    def slot(x, z):
        return model.denoise(z, 1.5, x)[0, k]

    ref = slot(x, z)
    for j in range(k + 1, 12):  # clean token i = k + 1 and later
        changed = x.clone()
        changed[0, j] = (x[0, j] + 1) % 11
        assert torch.allclose(slot(changed, z), ref, atol=1e-6), j
    other = z.clone()
    other[0, k + 1 :] += 1
    other[0, :k] += 1
    assert torch.allclose(slot(x, other), ref, atol=1e-6)
    for j in range(k + 1):
        changed = x.clone()
        changed[0, j] = (x[0, j] + 1) % 11
        assert not torch.allclose(slot(changed, z), ref, atol=1e-4), j


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_cached_generation_equals_uncached(sampler):
    model, cfg = ar_model(blocks=2, sampler=sampler)
    prompt = torch.randint(11, (2, 5))
    # 5 + 20 tokens overflow the context of 16, so the window restarts (caches refilled) too
    a = ar.generate(model, cfg, prompt, 20, torch.Generator().manual_seed(0), 1.0, cached=True)
    b = ar.generate(model, cfg, prompt, 20, torch.Generator().manual_seed(0), 1.0, cached=False)
    assert a.shape == (2, 25) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)


def test_cached_next_token_generation_equals_the_window_recomputed_per_token():
    cfg = ar.ARConfig(mode="e2e", prompt_length=4, lm=tiny_lm(11), device="cpu")
    model = ar.build(cfg).eval()
    prompt, caches = torch.randint(11, (3, 5)), [KVCache() for _ in model.layers]
    ids = torch.cat([prompt, torch.randint(11, (3, 6))], dim=1)
    cached = [model.extend(ids[:, :5], caches)]
    cached += [model.extend(ids[:, t : t + 1], caches) for t in range(5, 11)]
    assert torch.allclose(torch.stack(cached, 1), model(ids)[:, 4:], atol=1e-5)
    # 5 + 20 tokens overflow the context of 16: the window then slides, recomputed per token
    a = ar.generate(model, cfg, prompt, 20, torch.Generator().manual_seed(0), 1.0, cached=True)
    b = ar.generate(model, cfg, prompt, 20, torch.Generator().manual_seed(0), 1.0, cached=False)
    assert a.shape == (3, 25) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)


def test_greedy_prediction_starts_from_the_noise_mean_and_draws_start_from_noise():
    model, cfg = ar_model(blocks=2)
    x = torch.randint(11, (3, 6))
    greedy = ar.predict(model, x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(greedy, ar.predict(model, x, cfg, torch.Generator().manual_seed(1)))
    sigmas = ar.sigma_grid(cfg)
    z = sample_euler(model.denoiser(x), torch.zeros(3, 6, model.shared.embed_dim), sigmas)
    assert torch.equal(greedy, model.shared.logits(model.denoise(z, float(sigmas[-1]), x)))
    draw = [ar.predict(model, x, cfg, torch.Generator().manual_seed(s), temperature=1.0) for s in (0, 1)]
    assert not torch.allclose(draw[0], draw[1]) and not torch.allclose(draw[0], greedy)


def test_sampled_accuracy_of_a_next_token_model_is_the_mean_probability_of_the_answer():
    from diffusionblocks.models.lm import CausalLM

    model = CausalLM(tiny_lm(11))
    w = torch.randint(11, (4, 9))
    result = ar.scores(model, list(w), ar.ARConfig(prompt_length=4, lm=tiny_lm(11)))
    with torch.no_grad():
        p = model(w[:, :-1]).softmax(-1).gather(-1, w[:, 1:, None])
    assert result["sampled_accuracy"] == pytest.approx(p.mean().item(), rel=1e-5)


def test_diffusionblocks_generation_draws_once_its_start_noise_and_reads_the_argmax(monkeypatch):
    model, cfg = ar_model(blocks=2)
    prompt = torch.randint(11, (2, 5))
    greedy = ar.generate(model, cfg, prompt, 6, torch.Generator().manual_seed(0), 0.0)
    monkeypatch.setattr(torch, "multinomial", lambda *a, **k: pytest.fail("a second draw"))
    drawn = [ar.generate(model, cfg, prompt, 6, torch.Generator().manual_seed(s), 1.0) for s in (0, 1)]
    assert not torch.equal(drawn[0], drawn[1])  # the start noise is the draw
    assert torch.equal(greedy, ar.generate(model, cfg, prompt, 6, torch.Generator().manual_seed(5), 0.0))


def test_real_continuations_are_the_test_text_after_each_prompt_as_long_as_a_sample(text):
    cfg = ar.ARConfig(num_samples=5, prompt_length=8, sample_length=30)
    prompts, real = ar.prompts(text, cfg), ar.real_continuations(text, cfg)
    assert real.shape == (5, 38) and torch.equal(real[:, :8], prompts)
    assert real[-1].tolist() == text.test[-38:].tolist()  # the last prompt still has a whole continuation
    with pytest.raises(ValueError, match="shorter than"):
        ar.prompts(text, ar.ARConfig(prompt_length=8, sample_length=len(text.test)))


def test_top_p_draws_only_from_the_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(ar.pick(logits, 1.0, gen, top_p=0.95).flatten(), minlength=4)
    assert counts[3] == 0 and counts[2] > 0  # 0.5 + 0.3 + 0.15 reaches 0.95: the last token is out
    assert counts[0] / 4000 == pytest.approx(0.5 / 0.95, abs=0.03)
    assert torch.bincount(ar.pick(logits, 1.0, gen).flatten(), minlength=4)[3] > 0  # top-p 1: all
    assert ar.top_p(ar.ARConfig(decoding="paper")) == 0.95 and ar.top_p(ar.ARConfig()) == 1.0
    with pytest.raises(ValueError, match="--decoding paper takes B = 4 steps"):
        ar.ARConfig(decoding="paper", sample_steps=8)


def test_generation_runs_one_block_per_grid_point():
    model, cfg = ar_model(blocks=2)
    calls = []
    for b, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda *_, b=b: calls.append(b))
    slot = ar.NextSlot(model, ar.sigma_grid(cfg), torch.randint(11, (1, 4)), cached=False)
    for s in ar.sigma_grid(cfg):
        slot.denoise(torch.randn(1, 1, model.shared.embed_dim), s)
    assert calls == [0, 1]


@pytest.mark.parametrize("mode", ["e2e", "dblocks"])
def test_both_modes_learn_a_repetitive_text_far_beyond_chance(text, mode):
    cfg = ar.ARConfig(mode=mode, blocks=2, batch_size=16, steps=60, prompt_length=4, device="cpu",
                      lm=tiny_lm(text.tokenizer.vocab_size), optim=OptimConfig(lr=3e-3, warmup=10))
    model = ar.build(cfg)
    if mode == "e2e":
        from diffusionblocks.models.lm import next_token_loss
        from diffusionblocks.training import EndToEnd

        strategy, steps = EndToEnd(model, next_token_loss, cfg.optim, 4), 150
    else:
        strategy, steps = Blockwise(model, cfg.optim), 300
    win = Windows(text.train, 16, 17, 0)
    for t in range(steps):
        w = win(t)
        strategy.step(w[:, :-1], w[:, 1:], step_generator(0, t))
    result = ar.scores(model, ar.test_windows(text.test, 16), cfg)
    accuracy = result["next_char_accuracy" if mode == "e2e" else "teacher_forced_accuracy"]
    assert accuracy > 0.8  # chance is 1/30


# --- CLI -----------------------------------------------------------------------------------------


TINY = ["--width", "32", "--depth", "4", "--heads", "2", "--context", "16", "--batch-size", "4",
        "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("task", ["mdm", "ar"])
def test_cli_compare_generate_and_eval(task, text_file, tmp_path, capsys):
    out = tmp_path / task
    blocks = "2" if task == "ar" else "4"
    prompt = ["--prompt-length", "4"] if task == "ar" else []  # a setting mdm does not have
    cli.main(["compare", "--task", task, "--quick", "--data", str(text_file), "--out", str(out),
              "--blocks", blocks, *prompt, *TINY])
    report = json.loads((out / "report.json").read_text())
    if task == "mdm":
        keys = {"test_bpc", "bpc_stderr"}
        assert all(keys <= set(report[m]) for m in ("e2e", "dblocks"))
    else:
        judged = {"judge_bpc", "e2e_judge_bpc", "mauve"}
        assert {"test_bpc", "next_char_accuracy", *judged} <= set(report["e2e"])
        assert {"teacher_forced_accuracy", *judged} <= set(report["dblocks"])
        for mode in ("e2e", "dblocks"):
            assert 0 <= report[mode]["mauve"] <= 1 and report[mode]["mauve_samples"] == [4, 8]
        assert report["judge"]["steps"] == 30 and report["judge"]["width"] == 64  # twice the contestants'
        assert report["judge"]["test_bpc"] > 0 and "Independent judge" in (out / "report.md").read_text()
    modes = {"e2e", "dblocks", "shallow"} | ({"ensemble"} if task == "ar" else set())  # the controls
    assert set(report) - {"judge"} == modes
    assert len({report[m]["layer_evals"] for m in modes}) == 1
    assert report["shallow"]["depth"] == 4 // int(blocks)
    if task == "ar":  # per predicted token: L layers, but d for the shallow control
        assert {m: report[m]["inference_layers"] for m in modes} == {
            "e2e": 4, "dblocks": 4, "ensemble": 4, "shallow": 4 // int(blocks)}
        assert {"judge_bpc", "e2e_judge_bpc", "mauve", "test_bpc"} <= set(report["ensemble"])
    else:  # a denoising step runs one block: d layers, as the shallow control's every step
        assert {m: report[m]["inference_layers"] for m in modes} == {"e2e": 4, "dblocks": 1, "shallow": 1}
    capsys.readouterr()
    ckpt = str(out / "dblocks" / "checkpoint")
    paper = ["--decoding", "paper"] if task == "ar" else []  # mdm has no such setting
    cli.main(["generate", ckpt, "--prompt", "the ", "--length", "12", "--device", "cpu", *paper])
    printed = capsys.readouterr().out
    assert printed.startswith("the ") and len(printed.strip()) == 12 + (4 if task == "ar" else 0)
    judge = ["--judge", str(out / "e2e" / "checkpoint")] if task == "ar" else []
    cli.main(["eval", ckpt, "--device", "cpu", "--out", str(tmp_path / "ev"), *judge])
    evaluated = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert evaluated["task"] == task and evaluated["mode"] == "dblocks"


def test_cli_refuses_text_flags_for_classify_and_bad_text_configs(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--task", "classify", "--data", "x.txt", "--quick"])
    assert "--data does not apply to --task classify (it is a setting of mdm, ar, recurrent)" in \
        capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot cut 4 layers into 5 blocks"):
        mdm.MDMConfig(blocks=5, lm=tiny_lm(10))
    with pytest.raises(ValueError, match="unknown tokenizer"):
        ar.ARConfig(tokenizer="words")
    with pytest.raises(ValueError, match="prompt_length 32 exceeds the context 16"):
        ar.ARConfig(lm=tiny_lm(10))


def test_bad_text_input_gets_one_readable_error(tmp_path, monkeypatch, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ValueError, match="holds 9 characters; a language model needs at least 1,000"):
        load_text(str(short))
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(ValueError, match="pip install datasets"):
        load_text("hf:tiny_shakespeare")
    for bad, match in [(dict(temperature=-1), "temperature must be ≥ 0"),
                       (dict(bound_passes=1), "bound_passes must be at least 2"),
                       (dict(sample_length=200), "sample_length 200 exceeds the context 128")]:
        with pytest.raises(ValueError, match=match):
            mdm.MDMConfig(**bad)
    image = tmp_path / "image_ckpt"
    image.mkdir()
    (image / "config.json").write_text(json.dumps({"task": "generate"}))
    with pytest.raises(SystemExit):
        cli.main(["generate", str(image), "--prompt", "hi"])
    assert "`diffusionblocks sample`" in capsys.readouterr().err


# --- recurrent depth -----------------------------------------------------------------------------


def recurrent_model(mode, **overrides):
    from diffusionblocks.tasks import recurrent

    cfg = recurrent.RecurrentConfig(mode=mode, prompt_length=4, device="cpu", lm=tiny_lm(11), **overrides)
    model = recurrent.build(cfg)
    calls = []
    core = model.core if mode == "baseline" else model.blocks[0].layers
    core[0].register_forward_hook(lambda *_: calls.append(1))
    return recurrent, cfg, model, calls


@pytest.mark.parametrize("mode", ["baseline", "dblocks"])
def test_recurrent_inference_layer_evaluations_are_counted_as_run(mode):
    """Every layer call of one token's prediction, counted by hooks, is the reported cost; the
    DiffusionBlocks prelude runs once per sequence however many denoiser calls follow."""
    from diffusionblocks.tasks import recurrent

    cfg = recurrent.RecurrentConfig(mode=mode, prompt_length=4, device="cpu", lm=tiny_lm(11))
    model = recurrent.build(cfg).eval()
    calls = []
    for layer in model.modules():
        if type(layer).__name__ == "TransformerLayer":
            layer.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randint(11, (2, 10))
    for k in (1, 4, 8):
        calls.clear()
        run = recurrent.with_depth(model, cfg, k)
        if mode == "baseline":
            model(x)
        else:
            model.blocks[0].adapter._kept = None  # a new sequence (x was read at the last k)
            ar.predict(model, x, run)
        assert len(calls) == recurrent.inference_layer_evals(run, k)
    assert recurrent.inference_layer_evals(cfg, 8) == (36 if mode == "baseline" else 50)


def test_recurrent_prelude_kept_for_one_sequence_is_exact_and_dropped_for_another():
    recurrent, cfg, model, _ = recurrent_model("dblocks")
    model.eval()
    x, other = torch.randint(11, (2, 10)), torch.randint(11, (2, 10))
    with torch.no_grad():
        first = ar.predict(model, x, cfg)
        assert torch.equal(ar.predict(model, other, cfg), ar.predict(model, other.clone(), cfg))
        x[0, 3] = (x[0, 3] + 1) % 11  # the same tensor, changed in place: its prelude is redone
        changed = ar.predict(model, x, cfg)
        model.blocks[0].adapter._kept = None
        assert torch.equal(changed, ar.predict(model, x, cfg)) and not torch.equal(first, changed)


def test_recurrent_baseline_training_cost_replays_the_drawn_depths(text_file, tmp_path):
    from diffusionblocks.tasks import recurrent

    cfg = recurrent.RecurrentConfig(mode="baseline", data=str(text_file), steps=21, evals=1, prompt_length=4,
                                    device="cpu", lm=tiny_lm(11), out=str(tmp_path / "b"))
    result = recurrent.train(cfg, show=False, evaluate=False)
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    depths = {r["step"]: r["depth"] for r in logged if "depth" in r}
    replay = [recurrent.draw_depth(cfg.mean_depth, step_generator(cfg.seed, t)) for t in range(21)]
    assert all(replay[step - 1] == d for step, d in depths.items()) and len(depths) >= 3
    passes = result["train_layer_evals"]
    assert passes["forward"] == result["layer_evals"]
    assert passes["backward"] == sum(2 + 4 * min(d, cfg.backprop_depth) + 2 for d in replay)


def test_recurrent_dblocks_trains_one_core_pass_and_infers_with_k():
    recurrent, cfg, model, calls = recurrent_model("dblocks")
    strategy = recurrent.make_strategy(model, cfg)
    x = torch.randint(11, (4, 16))
    record = strategy.step(x, x, step_generator(0, 0))
    assert len(calls) == 1 and record["layers"] == cfg.prelude + cfg.core + cfg.coda == 8
    for k in (1, 3, 8):
        calls.clear()
        ar.predict(model, x, recurrent.with_depth(model, cfg, k))
        assert len(calls) == k


def test_recurrent_state_at_i_never_sees_token_i_plus_1():
    """DiffusionBlocks' state i (denoising token i + 1) may see clean tokens ≤ i and the states
    before it (noisy copies of tokens ≤ i), never a later token or state."""
    recurrent, cfg, model, _ = recurrent_model("dblocks")
    torch.manual_seed(0)
    with torch.no_grad():  # leave the zero-initialized (identity) start: every path must carry
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, z, i = torch.randint(11, (1, 12)), torch.randn(1, 12, cfg.lm.width), 6

    def out(x, z):
        return model.denoise(z, 1.0, x)[0, i]

    ref = out(x, z)
    later_x, later_z, earlier_x, earlier_z = x.clone(), z.clone(), x.clone(), z.clone()
    later_x[0, i + 1 :] = (x[0, i + 1 :] + 1) % 11
    later_z[0, i + 1 :] = torch.randn(5, cfg.lm.width)
    earlier_x[0, i] = (x[0, i] + 1) % 11
    earlier_z[0, i - 1] = torch.randn(cfg.lm.width)
    assert torch.equal(out(later_x, z), ref) and torch.equal(out(x, later_z), ref)
    assert not torch.allclose(out(earlier_x, z), ref) and not torch.allclose(out(x, earlier_z), ref)


def test_recurrent_baseline_unrolls_a_random_depth_and_truncates_backprop():
    recurrent, cfg, model, calls = recurrent_model("baseline")
    strategy = recurrent.make_strategy(model, cfg)
    x = torch.randint(11, (4, 16))
    record = strategy.step(x, x, step_generator(0, 3))
    assert len(calls) == record["depth"] and record["layers"] == 2 + 4 * record["depth"] + 2
    depths = [recurrent.draw_depth(8, torch.Generator().manual_seed(s)) for s in range(2000)]
    assert abs(sum(depths) / len(depths) - 8) < 0.3 and min(depths) >= 1
    # only the last backprop_depth iterations keep a graph: activations grow with them, not depth
    from diffusionblocks.memory import activation_bytes
    from diffusionblocks.models.lm import next_token_loss

    def saved(depth, tracked):
        return activation_bytes(lambda: next_token_loss(model(x, depth, tracked), x), model)

    assert saved(12, 4) == saved(6, 4) < saved(6, 6)


def test_cli_compare_recurrent_quick(text_file, tmp_path, capsys):
    out = tmp_path / "rec"
    flags = [f for i, f in enumerate(TINY) if "--depth" not in TINY[max(0, i - 1) : i + 1]]  # no depth
    cli.main(["compare", "--task", "recurrent", "--quick", "--data", str(text_file), "--out", str(out),
              "--prompt-length", "4", *flags])
    report = json.loads((out / "report.json").read_text())
    for mode in ("baseline", "dblocks"):
        keys = {"layer_evals_per_step", "train_seconds", "activation_bytes_per_step", "judge_bpc",
                "e2e_judge_bpc", "mauve"}
        assert keys <= set(report[mode])
    assert report["judge"]["parameters"] > report["baseline"]["parameters"]
    assert report["dblocks"]["layer_evals_per_step"] == 8
    assert (out / "quality_vs_layer_evals.png").stat().st_size > 0
    assert report["dblocks"]["train_layer_evals_fwd_bwd_per_step"] == 16
    assert "| dblocks | 2 | 14 |" in (out / "report.md").read_text()  # 2 + 2 × (4 + 2)
    capsys.readouterr()
    cli.main(["generate", str(out / "dblocks" / "checkpoint"), "--prompt", "the ", "--length", "6",
              "--sample-steps", "3", "--device", "cpu"])
    assert capsys.readouterr().out.startswith("the ")


def test_rotary_attention_depends_on_relative_position_and_caches_exactly():
    from diffusionblocks.models.lm import KVCache, causal_mask, make_layers, run_cached
    from diffusionblocks.models.vit import rotary

    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    dots = [(rotary(q, i) * rotary(k, i - 3)).sum().item() for i in (3, 7, 20)]
    assert dots == pytest.approx([dots[0]] * 3, abs=1e-5)  # only the offset 3 matters
    torch.manual_seed(0)
    layers = make_layers(tiny_lm(11, rope=True), cond_dim=None)
    h = torch.randn(2, 10, 32)
    full = h
    for layer in layers:
        full = layer(full, None, causal_mask(10))
    caches = [KVCache() for _ in layers]
    parts = [run_cached(layers, h[:, :6], None, caches, keep=True)]
    parts += [run_cached(layers, h[:, i : i + 1], None, caches, keep=True) for i in range(6, 10)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="rotary positions"):
        ar.ARConfig(lm=LMConfig(depth=8, rope=True))


# --- subword tokenizers --------------------------------------------------------------------------


def test_bpe_learns_from_the_training_split_only_and_round_trips(text_file, tmp_path):
    pytest.importorskip("tokenizers")
    data = load_text(str(text_file), tokenizer="bpe", bpe_vocab=300)
    tok = data.tokenizer
    assert tok.kind == "bpe" and 256 < tok.vocab_size <= 300
    pieces = [tok.decode(ids) for ids in (data.train, data.val, data.test)]
    assert "".join(pieces) == TEXT and len(pieces[0]) == int(0.9 * len(TEXT))  # split by characters
    assert data.chars_per_token("test") == len(pieces[2]) / len(data.test) > 1.5
    again = Tokenizer.from_dict(tok.to_dict())  # what a checkpoint keeps
    assert torch.equal(again.encode(pieces[2]), data.test)
    saved = tmp_path / "tokenizer.json"
    saved.write_text(tok.chars)
    from_file = load_text(str(text_file), tokenizer=str(saved))
    assert torch.equal(from_file.test, data.test)


@pytest.mark.parametrize("task,mode", [("mdm", "dblocks"), ("ar", "e2e")])  # those with a likelihood
def test_a_bpe_run_reports_bits_per_character_and_per_token(task, mode, text_file, tmp_path):
    pytest.importorskip("tokenizers")
    module = {"mdm": mdm, "ar": ar}[task]
    cls = {"mdm": mdm.MDMConfig, "ar": ar.ARConfig}[task]
    extra = {"bound_passes": 2} if task == "mdm" else {"prompt_length": 4}
    cfg = cls(mode=mode, data=str(text_file), tokenizer="bpe", bpe_vocab=300, device="cpu", batch_size=4,
              evals=1, blocks=2, steps=4, num_samples=1, sample_length=8, lm=tiny_lm(1, context=16),
              out=str(tmp_path / task), **extra)
    result = module.train(cfg, show=False)
    data = load_text(str(text_file), tokenizer="bpe", bpe_vocab=300)
    assert result["test_bpc"] == pytest.approx(result["test_bits_per_token"] / data.chars_per_token("test"))
    assert result["test_bits_per_token"] > result["test_bpc"] > 0
    last = result["history"][-1]  # the validation curve is per character too
    key = "val_bpc" if task == "mdm" else "val_test_bpc"
    per_token = last[key.replace("bpc", "bits_per_token")]
    assert last[key] == pytest.approx(per_token / data.chars_per_token("val"))
    if task == "ar":  # samples, judged: total bits over the characters they decode to
        continuations = [text.split(" ⟨⟩ ", 1)[1] for text in result["samples"]]
        tokens, characters = 8 * len(continuations), sum(map(len, continuations))
        per_token = result["e2e_judge_bits_per_token"]
        assert result["e2e_judge_bpc"] == pytest.approx(per_token * tokens / characters)
    saved = json.loads((tmp_path / task / "checkpoint" / "config.json").read_text())
    assert saved["tokenizer"] == "bpe" and saved["lm"]["vocab_size"] == data.tokenizer.vocab_size
    model, loaded = module.load(tmp_path / task / "checkpoint")  # the tokenizer comes back with it
    assert Tokenizer(loaded.tokenizer, loaded.vocab).encode("the fox").tolist() == \
        data.tokenizer.encode("the fox").tolist()


def test_a_bpe_dry_run_stays_one_readable_line(text_file, capsys):
    pytest.importorskip("tokenizers")
    cli.main(["train", "ar", "--data", str(text_file), "--tokenizer", "bpe", "--bpe-vocab", "300",
              "--dry-run"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(line)
    assert report["config"]["vocab"].startswith("<the tokenizer's state") and len(line) < 3000
    assert report["config"]["lm"]["vocab_size"] > 256 and report["parameters"] > 0


# --- pretrained conversion -----------------------------------------------------------------------


def test_a_converted_ar_block_reads_the_end_to_end_model_cut_to_its_layers():
    from diffusionblocks.models.lm import CausalLM

    torch.manual_seed(0)
    model, cfg = ar_model(vocab=11, blocks=2)
    e2e = CausalLM(cfg.lm).eval()
    for p in e2e.parameters():  # trained-looking weights: norms and biases off their init
        p.data += 0.1 * torch.randn_like(p)
    ar.init_from(model, e2e)
    x = torch.randint(0, 11, (3, 16))
    with torch.no_grad():
        for b, (block, (lo, hi)) in enumerate(zip(model.blocks, model.ranges)):
            c = block.noise_embed(torch.full((3,), 0.7))  # any σ: the layers ignore it at conversion
            h = block.adapter.encode(x, torch.randn(3, 16, model.shared.embed_dim))
            for layer in block.layers:
                h = layer(h, c, block.adapter.attention_mask(x))
            want = e2e.stem(x)
            for layer in e2e.layers[2 * b : 2 * b + 2]:
                want = layer(want, None, causal_mask(16))
            assert torch.allclose(h[:, :16], want, atol=1e-5)  # the clean stream
            _, c_out, _, _ = scalings(torch.tensor((lo * hi) ** 0.5), model.noise.sigma_data)
            logits = model.shared.logits(c_out * block.adapter.read(h[:, :16]))
            assert torch.allclose(logits, e2e.head(e2e.norm(want)), atol=1e-4)


def test_cli_converts_an_ar_model_and_scores_it_before_fine_tuning(text_file, tmp_path):
    common = ["--data", str(text_file), "--blocks", "2", "--steps", "4", "--evals", "1",
              "--prompt-length", "4", *TINY]
    cli.main(["train", "ar", "--mode", "e2e", *common, "--out", str(tmp_path / "e2e")])
    cli.main(["train", "ar", "--mode", "dblocks", *common, "--out", str(tmp_path / "db"),
              "--init-from", str(tmp_path / "e2e" / "checkpoint")])
    records = [json.loads(line) for line in (tmp_path / "db" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in records if "val_teacher_forced_accuracy" in r]
    assert evals == [0, 8]  # the converted model, then after fine-tuning (2 blocks × 4 steps)
    with pytest.raises(ValueError, match="needs --mode dblocks"):
        ar.ARConfig(mode="e2e", init_from="x")
