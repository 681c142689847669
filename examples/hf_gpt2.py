"""A Hugging Face GPT-2 as an autoregressive DiffusionBlocks model of Tiny Shakespeare.

A small, randomly initialised GPT-2 (``transformers``' own ``GPT2Block``) has its layers made
noise-conditioned by ``conditioned`` (AdaLN on ``ln_1`` and ``ln_2``; exactly the original
layers at initialisation), cut into 2 blocks, and trained block by block to denoise the
embedding of each next character, each slot seeing its clean prefix. Teacher-forced accuracy
on the test split is reported beside the frequency of the commonest character.

    python examples/hf_gpt2.py [--quick] [--data-dir ../shared/data]

Prints one JSON line; ``{"skipped": ...}`` (exit 0) without ``transformers`` or the text.
"""

import argparse
import json
import time

import torch
from torch import nn

from diffusionblocks import Blockwise, DiffusionBlocks, OptimConfig, TokenSpace, conditioned, fit
from diffusionblocks.adapters import TokensToNextToken
from diffusionblocks.data.text import Windows
from diffusionblocks.models.lm import LMConfig
from diffusionblocks.tasks import ar
from diffusionblocks.tasks.text import load_data, resolved


class GPT2Layer(nn.Module):
    """A ``GPT2Block`` called as the blocks call a layer, ``(h, mask)`` with a boolean mask
    (True: may attend), which GPT-2 takes as an additive mask over (batch, head, query, key)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, h, mask):
        additive = torch.zeros(mask.shape, dtype=h.dtype, device=h.device).masked_fill(~mask, float("-inf"))
        out = self.block(h, attention_mask=additive[None, None])
        return out[0] if isinstance(out, tuple) else out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (seconds)")
    parser.add_argument("--data-dir", help="folder holding tinyshakespeare/ (default: $DIFFUSIONBLOCKS_DATA)")
    args = parser.parse_args()
    try:
        from transformers import GPT2Config
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    except ImportError:
        print(json.dumps({"example": "hf_gpt2", "skipped": "transformers is not installed (pip install "
                                                           "'diffusionblocks[hf]')"}))
        return
    context = 32 if args.quick else 64
    shape = LMConfig(width=64, depth=4, heads=4, context=context)
    optim = OptimConfig(lr=3e-3, weight_decay=0.1)
    cfg = ar.ARConfig(blocks=2, data_dir=args.data_dir, lm=shape, optim=optim)
    try:
        data = load_data(cfg)
    except (OSError, ValueError) as e:
        print(json.dumps({"example": "hf_gpt2", "skipped": f"no text: {e}"}))
        return
    torch.manual_seed(0)
    start = time.perf_counter()
    cfg = ar.ARConfig.from_dict(resolved(cfg, data))  # the vocabulary from the data
    lm, steps, batch = cfg.lm, 400 if args.quick else 4000, 16 if args.quick else 32
    gpt2 = GPT2Config(n_embd=lm.width, n_head=lm.heads, n_layer=lm.depth, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, attn_implementation="sdpa")
    layers = conditioned([GPT2Layer(GPT2Block(gpt2, layer_idx=i)) for i in range(lm.depth)],
                         cond_dim=lm.width)
    tokens = TokenSpace(lm.vocab_size, lm.width)
    model = DiffusionBlocks(layers, tokens, lambda: TokensToNextToken(lm, lm.width), blocks=2,
                            cond_dim=lm.width, noise=cfg.noise, shared_policy="frozen")
    windows = Windows(data.train, batch, lm.context + 1, seed=0)

    def batch_at(t: int):
        w = windows(t)
        return w[:, :-1], w[:, 1:]

    fit(Blockwise(model, cfg.optim), batch_at, total=steps, warmup=steps // 10, seed=0, show=False)
    pieces = ar.test_windows(data.test, lm.context)[:16 if args.quick else 256]
    accuracy = ar.scores(model, pieces, cfg)["teacher_forced_accuracy"]
    targets = torch.cat([p[1:] for p in pieces])
    print(json.dumps({"example": "hf_gpt2", "steps": steps, "blocks": 2, "layers": lm.depth,
                      "teacher_forced_accuracy": round(accuracy, 4),
                      "chance": round(targets.bincount().max().item() / len(targets), 4),
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
