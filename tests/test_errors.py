"""Every bad input listed in DEVELOPERS.md gives one readable error naming problem and fix."""

import pytest
import torch

from diffusionblocks import cli
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.tasks.classify import ClassifyConfig


@pytest.mark.parametrize("kwargs, words", [
    ({"blocks": 7}, "cannot cut 6 layers into 7 blocks"),
    ({"blocks": 4}, r"6 layers do not split evenly into 4 blocks; pass an explicit split such as "
                    r"\[2, 2, 1, 1\]"),
    ({"blocks": 3, "split": [3, 3]}, "must have 3 positive layer counts summing to 6"),
    ({"mode": "pipeline"}, "unknown mode 'pipeline'; choose one of e2e, dblocks"),
    ({"sampler": "ddim"}, "unknown sampler 'ddim'; choose one of euler, heun"),
    ({"grid": "linear"}, "unknown grid 'linear'"),
    ({"match": "flops"}, "unknown budget match 'flops'"),
    ({"shared_policy": "synced"}, "unknown shared policy 'synced'; choose one of cotrained, frozen"),
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
    ({"decode": "sample"}, "unknown decode 'sample'; choose one of greedy, draw"),
    ({"readout": "vote"}, "unknown readout 'vote'; choose one of mean, last"),
    ({"augment": "flip,mixup"}, "unknown augmentation 'mixup'; choose from flip, crop"),
    ({"val_size": -1}, "val_size must be 0 \\(no validation split\\) or more, got -1"),
])
def test_bad_classify_config(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ClassifyConfig(**kwargs)


@pytest.mark.parametrize("kwargs, words", [
    ({"image_size": 28, "patch_size": 5}, "patch_size 5 must divide image_size 28"),
    ({"width": 30, "heads": 4}, "heads 4 must divide width 30"),
])
def test_bad_vit_config(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ViTConfig(**kwargs)


def test_mixed_blocks_in_one_denoise_call(tiny_model, batch):
    x, _ = batch
    sigma = torch.tensor([80.0] * 4 + [0.002] * 4)
    with pytest.raises(ValueError, match=r"belong to blocks \[0, 2\]; pass block="):
        tiny_model.denoise(torch.zeros(8, tiny_model.shared.embed_dim), sigma, x)


def test_cli_eval_without_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint at" in err and "config.json" in err


def test_cli_uneven_split_is_rejected_before_any_training(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--quick", "--quiet", "--depth", "5", "--out", str(tmp_path)])
    assert "pass an explicit split" in capsys.readouterr().err
    assert not (tmp_path / "e2e").exists()
