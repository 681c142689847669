"""A stock ``nn.TransformerEncoder`` as a DiffusionBlocks classifier of handwritten digits.

PyTorch's own encoder layers are made noise-conditioned by ``conditioned`` (AdaLN on their
LayerNorms; exactly the original layers at initialisation), cut into 3 blocks of 2 layers, and
each block trained alone as a denoiser of the label. Prediction runs the label from noise to
clean, one call per block, starting at the noise mean (greedy), and averages the calls'
log-probabilities.

    python examples/torch_transformer.py [--quick]

Prints one JSON line with the test accuracy on scikit-learn's digits (360 images; chance 10%).
"""

import argparse
import json
import time

import torch
from torch import nn

from diffusionblocks import (
    Blockwise,
    DiffusionBlocks,
    ImageToLabel,
    NoiseConfig,
    OptimConfig,
    TokenSpace,
    conditioned,
    fit,
    sample_euler,
)
from diffusionblocks.data.images import load_images
from diffusionblocks.models.vit import ViTConfig
from diffusionblocks.noise import sigmas_uniform


@torch.no_grad()
def predict(model: DiffusionBlocks, x: torch.Tensor) -> torch.Tensor:
    """Greedy label decoding: z from the noise mean at σ_max, one Euler step per block, then
    the mean log-probability over every call (the library's classification default)."""
    table, calls = model.shared.embeddings(), []

    def denoiser(z, sigma):
        logits = model.shared.logits(model.denoise(z, float(sigma), x))
        calls.append(logits.log_softmax(-1))
        return logits.softmax(-1) @ table

    sigmas = sigmas_uniform(model.noise, model.num_blocks)
    z = sample_euler(denoiser, torch.zeros(len(x), table.shape[1]), sigmas)
    denoiser(z, sigmas[-1])
    return torch.stack(calls).mean(0).argmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (seconds)")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    data = load_images("digits")  # embedded in scikit-learn: (N, 1, 8, 8), 10 classes
    width, steps = 64, 300 if args.quick else 3000

    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True),
        num_layers=6, enable_nested_tensor=False)
    layers = conditioned(encoder.layers, cond_dim=width)
    shape = ViTConfig(image_size=8, channels=1, patch_size=2, width=width, num_classes=10)
    labels = TokenSpace(10, width)  # unit-length label embeddings; logits read against them
    noise = NoiseConfig(sigma_min=2.0, partition="uniform")  # a label's range (docs/cifar10.md)
    model = DiffusionBlocks(layers, labels, lambda: ImageToLabel(shape, width), blocks=3, cond_dim=width,
                            noise=noise, shared_policy="frozen")  # blocks share nothing that moves
    strategy = Blockwise(model, OptimConfig(lr=5e-3))

    def batch_at(t: int):
        i = torch.randint(len(data.y_train), (128,), generator=torch.Generator().manual_seed(t))
        return data.x_train[i], data.y_train[i]

    fit(strategy, batch_at, total=steps, warmup=steps // 10, seed=0, show=False)
    model.eval()
    accuracy = (predict(model, data.x_test) == data.y_test).float().mean().item()
    print(json.dumps({"example": "torch_transformer", "steps": steps, "blocks": 3,
                      "test_accuracy": round(accuracy, 4), "test_examples": len(data.y_test),
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
