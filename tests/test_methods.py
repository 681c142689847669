"""The controls as methods: budgets, independence of members, the ensemble's read-out, member
jobs and merge, resume, and the bad inputs of each."""

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import killed_after_first_checkpoint
from torch import nn

from diffusionblocks import cli, methods
from diffusionblocks.blocks import DiffusionBlocks
from diffusionblocks.methods import ensemble, shallow
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.tasks import ar, classify, generate
from diffusionblocks.tasks.classify import ClassifyConfig
from diffusionblocks.training import OptimConfig

TINY = dict(dataset="digits", blocks=3, batch_size=32, evals=1, steps=12,
            vit=ViTConfig(width=16, depth=6, heads=2), optim=OptimConfig(lr=None, warmup=3))


# --- budgets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("split, depth", [(None, 2), ([3, 2, 1], 3)])
def test_shallow_gets_the_layer_evaluations_of_end_to_end(split, depth):
    cfg = ClassifyConfig(mode="shallow", split=split, **TINY)
    unit = shallow.unit(classify.FAMILY, cfg, steps=100)
    assert unit.mode == "e2e" and unit.vit.depth == depth  # one block's depth (the largest block)
    assert unit.steps == math.ceil(100 * 6 / depth) and unit.optim.warmup == math.ceil(3 * 6 / depth)
    assert abs(unit.steps * depth - 100 * 6) / (100 * 6) < 0.01  # equal layer evaluations
    same_steps = shallow.unit(classify.FAMILY, ClassifyConfig(mode="shallow", match="steps", **TINY), 100)
    assert same_steps.steps == 100


def test_shallow_is_one_block_deep_in_every_family():
    for family, cfg in ((generate.FAMILY, generate.GenerateConfig(mode="shallow", blocks=3)),
                        (ar.FAMILY, ar.ARConfig(mode="shallow", blocks=4))):
        depth = methods.depth_of(family, cfg)
        unit = shallow.unit(family, cfg, steps=10)
        assert methods.depth_of(family, unit) == depth // cfg.blocks and unit.steps == 10 * cfg.blocks


def test_e2e_and_dblocks_are_method_modules_with_their_budgets_in_every_family():
    from diffusionblocks.tasks import mdm
    from diffusionblocks.training import Blockwise, EndToEnd

    data = classify.FAMILY.load_data(ClassifyConfig(**TINY))
    cfg = classify.resolve_config(ClassifyConfig(mode="e2e", **TINY), data)
    e2e = methods.method(classify.FAMILY, cfg, classify.build(cfg))
    assert isinstance(e2e.strategy, EndToEnd) and (e2e.total, e2e.warmup) == (12, 3)
    assert e2e.strategy.loss_fn is torch.nn.functional.cross_entropy and e2e.strategy.layers == 6
    cfg = classify.resolve_config(ClassifyConfig(mode="dblocks", **TINY), data)
    db = methods.method(classify.FAMILY, cfg, classify.build(cfg))
    assert isinstance(db.strategy, Blockwise) and (db.total, db.warmup) == (36, 9)  # B× steps
    job = methods.method(classify.FAMILY, cfg, classify.build(cfg), blocks=[1])
    assert (job.total, job.warmup) == (12, 3)  # a block job: its share
    wrong = replace(cfg, label_error=0.4)
    assert methods.method(classify.FAMILY, wrong, classify.build(wrong)).strategy.loss.args == (0.4,)
    gen = generate.GenerateConfig(mode="e2e", steps=10)  # one denoiser over every σ: one block
    one = methods.method(generate.FAMILY, gen, generate.build(gen))
    assert isinstance(one.strategy, Blockwise) and one.total == 10
    lm = mdm.MDMConfig(mode="dblocks", blocks=3, steps=10)
    masked = methods.method(mdm.FAMILY, lm, mdm.build(lm))
    assert masked.total == 30 and masked.strategy.loss is mdm.masked_loss
    assert methods.ABOUT["e2e"] == methods.e2e.ABOUT and methods.ABOUT["dblocks"] == methods.dblocks.ABOUT
    with pytest.raises(ValueError, match="control"):
        methods.method(classify.FAMILY, replace(cfg, mode="shallow"), classify.build(cfg))


def test_ensemble_members_have_the_blocks_depths_their_own_seeds_and_the_e2e_budget():
    cfg = ClassifyConfig(mode="ensemble", split=[3, 2, 1], seed=5, out="runs/x", **TINY)
    members = [ensemble.member_config(classify.FAMILY, cfg, k) for k in range(3)]
    assert [m.vit.depth for m in members] == [3, 2, 1]
    assert [m.seed for m in members] == [15, 16, 17]  # s·B + k: no two ensembles share a member
    assert all(m.mode == "e2e" and m.steps == cfg.steps for m in members)  # Σ depth · steps = L · steps
    assert [m.out for m in members] == [f"runs/x/member_{k}" for k in range(3)]
    other = [ensemble.member_config(classify.FAMILY, ClassifyConfig(mode="ensemble", seed=6, **TINY), k).seed
             for k in range(3)]
    assert not set(other) & {m.seed for m in members}


def test_members_never_share_a_parameter():
    cfg = classify.resolve_config(ClassifyConfig(mode="ensemble", **TINY), classify.FAMILY.load_data(
        ClassifyConfig(**TINY)))
    model = ensemble.build(classify.FAMILY, cfg)
    storages = [{p.untyped_storage().data_ptr() for p in m.parameters()} for m in model.members]
    assert all(not storages[i] & storages[j] for i in range(3) for j in range(i + 1, 3))
    first = [p.detach().clone() for p in model.members[0].parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(first, model.members[1].parameters()))


# --- the ensemble's read-out ---------------------------------------------------------------------


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_ensemble_combines_log_probabilities_or_probabilities_by_hand():
    a, b = [math.log(0.7), math.log(0.2), math.log(0.1)], [math.log(0.1), math.log(0.6), math.log(0.3)]
    x = torch.zeros(2, 1)
    mean_log = ensemble.Ensemble([Fixed(a), Fixed(b)], "logprob")(x)
    expected = [(math.log(0.7) + math.log(0.1)) / 2, (math.log(0.2) + math.log(0.6)) / 2,
                (math.log(0.1) + math.log(0.3)) / 2]
    assert torch.allclose(mean_log[0], torch.tensor(expected), atol=1e-6)
    mean_prob = ensemble.Ensemble([Fixed(a), Fixed(b)], "prob")(x)
    assert torch.allclose(mean_prob[0].exp(), torch.tensor([0.4, 0.4, 0.2]), atol=1e-6)
    assert mean_log[0].argmax() == 1 and mean_prob[0].exp().sum().item() == pytest.approx(1)
    with pytest.raises(ValueError, match="choose one of logprob, prob"):
        ensemble.Ensemble([Fixed(a)], "vote")


def test_an_ensemble_of_one_member_is_that_member(digits, tmp_path):
    base = TINY | {"blocks": 1, "vit": ViTConfig(width=16, depth=2, heads=2)}
    e2e, one = (classify.train(ClassifyConfig(mode=m, out=str(tmp_path / m), **base), digits, show=False)
                for m in ("e2e", "ensemble"))
    assert one["test_accuracy"] == e2e["test_accuracy"] and one["val_accuracy"] == e2e["val_accuracy"]
    assert one["layer_evals"] == e2e["layer_evals"] and one["parameters"] == e2e["parameters"]
    network, _ = classify.load(tmp_path / "e2e" / "checkpoint")
    members, cfg = classify.load(tmp_path / "ensemble" / "checkpoint")
    assert cfg.mode == "ensemble" and isinstance(members, ensemble.Ensemble)
    x = digits.x_test[:20]
    assert torch.equal(members(x), network(x).log_softmax(-1))


# --- member jobs, merge, resume ------------------------------------------------------------------


@pytest.fixture(scope="module")
def whole(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble")
    return out, classify.train(ClassifyConfig(mode="ensemble", out=str(out), **TINY), digits, show=False)


def test_an_ensemble_trains_its_members_with_the_e2e_budget_and_reports_both_rules(whole):
    out, result = whole
    assert result["layer_evals"] == 12 * 6 and result["inference_layers"] == 6  # as end to end
    assert [m["seed"] for m in result["members"]] == [0, 1, 2]
    assert set(result["validation_by_combine"]) == {"logprob", "prob"}
    assert [h["members"] for h in result["history"]] == [1, 2, 3]  # the ensembles of the first k
    assert result["history"][-1]["val_accuracy"] == result["val_accuracy"]
    assert json.loads((out / "result.json").read_text())["test_accuracy"] == result["test_accuracy"]
    for k in range(3):  # each member an ordinary end-to-end run
        assert json.loads((out / f"member_{k}" / "config.json").read_text())["mode"] == "e2e"


def test_member_jobs_merge_into_the_same_ensemble(whole, digits, tmp_path, capsys):
    out, result = whole
    sources = []
    for k in (2, 0, 1):  # any order, any machine
        job = ClassifyConfig(mode="ensemble", member=k, out=str(tmp_path / f"job_{k}"), **TINY)
        r = classify.train(job, digits, show=False)
        assert r["member"] == k and r["layer_evals"] == 12 * 2
        sources.append(str(tmp_path / f"job_{k}" / f"member_{k}" / "checkpoint"))
    cli.main(["merge", *sources, "--out", str(tmp_path / "merged")])
    capsys.readouterr()
    cli.main(["eval", str(tmp_path / "merged" / "checkpoint")])
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["mode"] == "ensemble" and evaluated["test_accuracy"] == result["test_accuracy"]
    with pytest.raises(ValueError, match=r"no checkpoint holds member\(s\) \[1\]"):
        classify.merge([sources[1], sources[0]], tmp_path / "wrong")
    with pytest.raises(ValueError, match="is not a member of one ensemble with the others"):
        classify.merge([sources[1], sources[1], sources[2]], tmp_path / "twice")
    e2e = ClassifyConfig(mode="e2e", seed=1, out=str(tmp_path / "other"), **TINY | {"steps": 2})
    classify.train(e2e, digits, show=False)  # seed 1, but 6 layers deep: not member 1
    with pytest.raises(ValueError, match="is not member 1 of one ensemble"):
        classify.merge([sources[1], str(tmp_path / "other" / "checkpoint"), sources[0]], tmp_path / "deep")


def test_a_killed_ensemble_resumes_to_the_same_result(whole, digits, tmp_path, monkeypatch):
    _, result = whole
    cfg = ClassifyConfig(mode="ensemble", out=str(tmp_path), **TINY)
    killed_after_first_checkpoint(monkeypatch, lambda: classify.train(cfg, digits, show=False))
    resumed = classify.train(cfg, digits, show=False)
    assert resumed["test_accuracy"] == result["test_accuracy"]
    assert resumed["validation_by_combine"] == result["validation_by_combine"]


def test_shallow_runs_and_resumes_as_an_end_to_end_run(digits, tmp_path):
    cfg = ClassifyConfig(mode="shallow", out=str(tmp_path), **TINY)
    first = classify.train(cfg, digits, show=False)
    assert first["mode"] == "shallow" and first["depth"] == 2 and first["steps"] == 36
    assert first["layer_evals"] == 12 * 6 and first["inference_layers"] == 2
    again = classify.train(cfg, digits, show=False)  # finished: reused
    assert again["test_accuracy"] == first["test_accuracy"]
    assert json.loads((tmp_path / "result.json").read_text())["mode"] == "shallow"


def test_an_autoregressive_ensemble_averages_per_token_and_merges_from_member_jobs(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("to be, or not to be: that is the question. " * 60)
    lm = dict(context=16, width=16, depth=4, heads=2)
    base = dict(data=str(path), blocks=2, steps=6, evals=1, batch_size=4, num_samples=2, sample_length=8,
                prompt_length=4, judge_steps=0, device="cpu", lm=ar.LMConfig(**lm))
    whole = ar.train(ar.ARConfig(mode="ensemble", out=str(tmp_path / "whole"), **base), show=False)
    e2e = ar.train(ar.ARConfig(mode="e2e", out=str(tmp_path / "e2e"), **base), show=False)
    assert whole["layer_evals"] == e2e["layer_evals"] and whole["inference_layers"] == 4
    assert [m["seed"] for m in whole["members"]] == [0, 1] and set(whole["validation_by_combine"]) == {
        "logprob", "prob"}
    model, cfg = ar.load(tmp_path / "whole" / "checkpoint")
    x = torch.randint(0, cfg.lm.vocab_size, (3, 16))
    per_member = torch.stack([m(x).log_softmax(-1) for m in model.members])
    assert torch.allclose(model(x), per_member.mean(0))  # mean log-probability, token by token
    sources = []
    for k in (1, 0):
        ar.train(ar.ARConfig(mode="ensemble", member=k, out=str(tmp_path / f"job_{k}"), **base), show=False)
        sources.append(tmp_path / f"job_{k}" / f"member_{k}" / "checkpoint")
    merged, _ = ar.load(ar.merge(sources, tmp_path / "merged"))
    assert torch.equal(merged(x), model(x))


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, words", [
    (["--member", "0"], "--member trains one member of an ensemble"),
    (["--mode", "ensemble", "--member", "3"], "member 3 does not exist: members are numbered 0 to 2"),
    (["--mode", "ensemble", "--parallel"], "train each as its own job (--member k)"),
    (["--mode", "shallow", "--block", "1"], "--block trains one block as its own job"),
    (["--mode", "shallow", "--depth", "7"], "7 layers do not split evenly into 3 blocks"),
])
def test_control_flags_that_do_not_apply_are_one_line(flags, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "classify", "--quiet", "--out", str(tmp_path), *flags])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and words in err


def test_compare_modes_names_the_task_s_modes(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--task", "generate", "--modes", "e2e,ensemble", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "generate has the modes e2e, dblocks, shallow" in err


def test_compare_trains_modes_side_by_side_in_their_own_processes(tmp_path):
    cfg = ClassifyConfig(**TINY | {"steps": 6, "vit": ViTConfig(width=16, depth=3, heads=2)})
    classify.compare(cfg, tmp_path, modes=("e2e", "ensemble"), jobs=2, show=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert {m: report[m]["layer_evals"] for m in ("e2e", "ensemble")} == {"e2e": 18, "ensemble": 18}
    alone = classify.train(ClassifyConfig(mode="e2e", out=str(tmp_path / "e2e"), **TINY | {
        "steps": 6, "vit": ViTConfig(width=16, depth=3, heads=2)}), show=False)  # finished: read back
    assert alone["test_accuracy"] == report["e2e"]["test_accuracy"]


@pytest.mark.parametrize("flags, words", [(["--jobs", "0"], "it must be at least 1"),
                                          (["--task", "mdm", "--jobs", "2"], "for --task classify only")])
def test_compare_jobs_that_do_not_apply_are_one_line(flags, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--quick", "--out", str(tmp_path), *flags])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and words in err


def test_every_peer_module_keeps_the_one_contract_and_is_found_by_its_file():
    import pkgutil

    from diffusionblocks import methods
    from diffusionblocks.commands.train import NOISE, ONLY

    modules = {i.name for i in pkgutil.iter_modules(methods.__path__)}
    assert set(methods.PEERS) == {"noprop", "local", "cff", "cwcomp", "dblocks_cnn", "e2e_cnn"}
    assert {"e2e", "dblocks", "ensemble", "shallow", "family"} <= modules - set(methods.PEERS)  # no trainer
    data = classify.load_images("digits")
    for name in methods.PEERS:
        module = methods.peer(name)
        for attr in ("build", "trainer", "activations", "LR", "ABOUT", "CROSSES", "UNITS", "FLAGS"):
            assert hasattr(module, attr), (name, attr)
        model = module.build(classify.resolve_config(ClassifyConfig(mode=name, blocks=3), data))
        if not isinstance(model, DiffusionBlocks):  # else the family reads it by its chain
            assert hasattr(module, "predict") and hasattr(module, "inference_layers"), name
        assert methods.ABOUT[name] == module.ABOUT
        for flag in module.FLAGS:  # each names a method flag of the family, which --help then lists
            for dest in NOISE if flag == "noise" else (flag,):
                assert name in ONLY["classify"][dest], (name, dest)
