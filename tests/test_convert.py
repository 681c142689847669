"""Bring your own layers: a wrapped layer computes exactly what it did before, until its
modulations learn; and it trains inside DiffusionBlocks."""

import copy
import json

import pytest
import torch
from torch import nn

from diffusionblocks.convert import Conditioned, conditioned, is_norm


@pytest.mark.parametrize("norm_first", [False, True])
def test_a_wrapped_transformer_layer_is_the_original_at_initialisation(norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first)
    layer.eval()  # the fused fast path is taken in eval only without grad; both must agree
    h, c = torch.randn(3, 7, 32), torch.randn(3, 16)
    want = layer(h)
    wrapped = Conditioned(layer, cond_dim=16)
    assert len(wrapped.mods) == 2  # norm1 and norm2
    assert torch.allclose(wrapped(h, c), want, atol=1e-6)
    mask = nn.Transformer.generate_square_subsequent_mask(7)
    assert torch.allclose(wrapped(h, c, mask), layer(h, mask), atol=1e-6)


def test_the_modulation_depends_on_c_once_it_has_learned():
    torch.manual_seed(0)
    wrapped = Conditioned(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 8)
    h = torch.randn(2, 5, 16)
    c = torch.randn(2, 8, requires_grad=True)
    wrapped(h, c).square().sum().backward()
    grads = [p.grad for p in wrapped.mods.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        for p in wrapped.mods.parameters():
            p.add_(0.1 * torch.randn_like(p))
    c2 = torch.randn(2, 8)
    assert not torch.allclose(wrapped(h, c), wrapped(h, c2))
    assert torch.allclose(wrapped.layer(h), wrapped.layer(h))  # outside the wrapper: unmodulated


class ResidualMLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h):
        return h + self.fc(h)


def test_a_layer_without_norms_has_its_input_modulated():
    torch.manual_seed(0)
    layer = ResidualMLP(12)
    with pytest.raises(ValueError, match="give width="):
        Conditioned(layer, 4)
    wrapped = Conditioned(layer, 4, width=12)
    h, c = torch.randn(5, 12), torch.randn(5, 4)  # 2-D hidden states broadcast too
    assert torch.equal(wrapped(h, c), layer(h))


def test_a_deep_copy_modulates_with_its_own_parameters():
    torch.manual_seed(0)
    wrapped = Conditioned(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 8)
    twin = copy.deepcopy(wrapped)
    with torch.no_grad():
        for p in twin.mods.parameters():
            p.add_(0.5)
    h, c = torch.randn(2, 5, 16), torch.randn(2, 8)
    assert not torch.allclose(twin(h, c), wrapped(h, c))
    assert torch.allclose(wrapped(h, c), wrapped.layer(h), atol=1e-6)  # the original is untouched


def test_tuple_outputs_give_their_first_item_and_norms_are_found_by_name():
    class GPT2LikeLayerNorm(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(width))

        def forward(self, x):
            return x / x.norm(dim=-1, keepdim=True) * self.weight

    class HFStyleBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = GPT2LikeLayerNorm(8)
            self.mlp = nn.Linear(8, 8)

        def forward(self, h, attention_mask=None):
            return (h + self.mlp(self.ln_1(h)), None)

    block = HFStyleBlock()
    assert is_norm(block.ln_1)
    wrapped = Conditioned(block, 4)
    h, c = torch.randn(2, 3, 8), torch.randn(2, 4)
    assert torch.equal(wrapped(h, c), block(h)[0])


def test_converted_layers_train_as_diffusion_blocks(digits):
    from diffusionblocks import DiffusionBlocks
    from diffusionblocks.adapters import ImageToLabel
    from diffusionblocks.models.vit import ViTConfig
    from diffusionblocks.tasks.classify import LabelSpace
    from diffusionblocks.training import Blockwise, OptimConfig, step_generator

    torch.manual_seed(0)
    vit = ViTConfig(image_size=8, channels=1, patch_size=2, width=16, depth=4, heads=2, num_classes=10)
    plain = [nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
             for _ in range(4)]
    layers = conditioned(plain, cond_dim=16)
    shared = LabelSpace(10, 16)
    model = DiffusionBlocks(layers, shared, lambda: ImageToLabel(vit, shared.embed_dim), 2, cond_dim=16)
    strategy = Blockwise(model, OptimConfig(lr=3e-3))
    x, y = digits.x_train[:64], digits.y_train[:64]
    losses = [strategy.step(x, y, step_generator(0, t))["loss"] for t in range(40)]
    assert sum(losses[-10:]) < sum(losses[:10])


def test_hugging_face_gpt2_and_llama_layers_are_the_originals_at_initialisation():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(
        n_layer=4, n_embd=32, n_head=4, vocab_size=50, n_positions=64, bos_token_id=0, eos_token_id=0)).eval()
    h, c = torch.randn(2, 7, 32), torch.randn(2, 16)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731 - versions differ
    want, got = h, h
    wrapped = conditioned(copy.deepcopy(list(gpt2.h)), cond_dim=16)
    assert all(len(w.mods) == 2 for w in wrapped)  # ln_1 and ln_2
    for block, layer in zip(gpt2.h, wrapped):
        want, got = first(block(want)), layer(got, c)
    assert (got - want).abs().max() <= 1e-5

    llama = transformers.LlamaModel(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=50, bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    rotary = llama.rotary_emb(h, torch.arange(7)[None].expand(2, -1))
    layer = llama.layers[0]
    want = first(layer(h, position_embeddings=rotary))
    wrapped = Conditioned(layer, cond_dim=16)
    assert len(wrapped.mods) == 2  # input_layernorm and post_attention_layernorm (RMSNorm)
    assert (wrapped(h, c, position_embeddings=rotary) - want).abs().max() <= 1e-5


def test_the_readme_program_runs_as_written_and_learns_the_circle():
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    program = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(program, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert abs(float(namespace["radius"].median()) - 1.0) < 0.15
    assert namespace["history"][-1]["loss"] < namespace["history"][0]["loss"]


# --- pretrained conversion: an end-to-end ViT becomes DiffusionBlocks -----------------------


def test_an_adopted_layer_computes_the_plain_one_for_any_conditioning():
    from diffusionblocks.models.vit import TransformerLayer

    torch.manual_seed(0)
    plain, cond = TransformerLayer(16, 2), TransformerLayer(16, 2, cond_dim=8)
    with torch.no_grad():  # trained norms are not the identity
        for p in [*plain.norm1.parameters(), *plain.norm2.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    cond.adopt(plain)
    h = torch.randn(3, 5, 16)
    for c in (torch.randn(3, 8), 10 * torch.randn(3, 8)):
        assert torch.allclose(cond(h, c), plain(h), atol=1e-5)
        assert torch.allclose(cond(h, c, queries=1), plain(h, queries=1), atol=1e-5)
    with pytest.raises(ValueError, match="plain layer into a conditioned one"):
        plain.adopt(cond)


def _config(digits, **overrides):
    from diffusionblocks.models.vit import ViTConfig
    from diffusionblocks.tasks import classify

    cfg = classify.ClassifyConfig(**{"dataset": "digits", "blocks": 3,
                                     "vit": ViTConfig(width=16, depth=6, heads=2), **overrides})
    return classify.resolve_config(cfg, digits)


def test_a_converted_block_is_the_end_to_end_model_cut_to_its_layers(digits, tmp_path):
    from diffusionblocks.tasks import classify

    e2e_cfg = _config(digits, mode="e2e", steps=100, evals=1, val_size=0, out=str(tmp_path / "e2e"))
    assert classify.train(e2e_cfg, digits, show=False)["test_accuracy"] > 0.2  # trained, not at init
    e2e, _ = classify.load(tmp_path / "e2e" / "checkpoint")
    cfg = _config(digits, init_from=str(tmp_path / "e2e" / "checkpoint"))
    model = classify.build(cfg)
    classify.init_from(model, classify.pretrained(cfg))
    x = digits.x_test[:64]
    with torch.no_grad():
        for b, (lo, hi) in enumerate(model.ranges):  # each block, from the noise mean at its σ
            h = e2e.stem(x, e2e.cls.expand(len(x), -1))
            for layer in e2e.layers[2 * b : 2 * b + 2]:
                h = layer(h)
            z = torch.zeros(len(x), model.shared.embed_dim)
            logits = model.shared.logits(model.denoise(z, (lo * hi) ** 0.5, x, block=b))
            assert torch.allclose(logits, e2e.head(e2e.norm(h[:, 0])), atol=1e-4)


def test_a_converted_run_starts_from_the_conversion_and_resumes_without_its_source(digits, tmp_path,
                                                                                   monkeypatch):
    import shutil

    from conftest import killed_after_first_checkpoint

    from diffusionblocks.tasks import classify

    source = tmp_path / "e2e" / "checkpoint"
    classify.train(_config(digits, mode="e2e", steps=30, evals=1, out=str(tmp_path / "e2e")), digits,
                   show=False)
    cfg = _config(digits, steps=20, evals=2, init_from=str(source), out=str(tmp_path / "db"))
    model = classify.build(cfg)
    classify.init_from(model, classify.pretrained(cfg))
    held = digits.holdout(cfg.val_size)
    want = classify.evaluate(model, held.x_val, held.y_val, cfg)
    killed_after_first_checkpoint(monkeypatch, lambda: classify.train(cfg, digits, show=False))
    first = [json.loads(line) for line in (tmp_path / "db" / "metrics.jsonl").read_text().splitlines()]
    assert first[0]["step"] == 0 and first[0]["val_accuracy"] == want  # the converted model, scored
    shutil.rmtree(source.parent)  # a resume needs only its own checkpoint
    result = classify.train(cfg, digits, show=False)
    assert [r["step"] for r in result["history"]] == [0, 30, 60]


def test_init_from_refuses_what_it_cannot_convert(digits, tmp_path, capsys):
    from dataclasses import replace

    from diffusionblocks import cli
    from diffusionblocks.models.vit import ViTConfig
    from diffusionblocks.tasks import classify

    with pytest.raises(ValueError, match="needs --mode dblocks"):
        _config(digits, mode="e2e", init_from="x")
    classify.train(_config(digits, mode="e2e", steps=2, evals=1, out=str(tmp_path / "e2e")),
                   digits, show=False)
    with pytest.raises(ValueError, match="holds a dblocks model"):
        classify.pretrained(_config(digits, init_from=str(_dblocks_run(digits, tmp_path))))
    with pytest.raises(ValueError, match="10 tokens in a 8-dimensional table"):
        small = _config(digits, mode="e2e", vit=ViTConfig(width=8, depth=6, heads=2))
        classify.init_from(classify.build(replace(small, mode="dblocks")), classify.build(small))
    with pytest.raises(ValueError, match="the end-to-end model has 5 layers, this one 6"):
        e2e = classify.build(_config(digits, mode="e2e"))
        classify.build(_config(digits)).adopt(e2e.layers[:5], e2e.head, lambda adapter: None)
    with pytest.raises(SystemExit) as exit:
        cli.main(["train", "classify", "--dataset", "digits", "--depth", "3", "--width", "16",
                  "--heads", "2", "--steps", "2", "--quiet", "--out", str(tmp_path / "db"),
                  "--init-from", str(tmp_path / "e2e" / "checkpoint")])
    assert exit.value.code == 2 and not (tmp_path / "db" / "checkpoint").exists()
    assert "another backbone (depth: 6 vs 3)" in capsys.readouterr().err


def _dblocks_run(digits, tmp_path):
    from diffusionblocks.tasks import classify

    classify.train(_config(digits, steps=2, evals=1, out=str(tmp_path / "db_source")), digits, show=False)
    return tmp_path / "db_source" / "checkpoint"
