"""The block-wise model: a residual stack cut into B denoising blocks (METHOD.md §1, §5-7).

Three steps turn any sequence of residual layers into DiffusionBlocks:

1. split the L layers into B contiguous blocks (evenly, or by an explicit ``split``);
2. give each block a noise range (block 0, the input end, gets the highest noise);
3. condition each block on its noise level through its own :class:`NoiseEmbedding`.

Each block also owns an :class:`Adapter` (made by a task-supplied factory): ``encode(x, z_in)``
builds the hidden sequence from the conditioning input and the c_in-scaled noisy target,
``decode(h, c)`` reads F, and ``condition(x)`` may add to the conditioning vector (a class label).
``attention_mask(x)`` may restrict attention (a language model's causal masks). Only the target
space (e.g. the label table, :class:`TokenSpace`) is a :class:`SharedParts` module used by every
block: it is the one thing blocks hand to each other. Layers are called as ``layer(h, c)`` with
the hidden sequence ``h`` and a conditioning vector ``c`` (N, cond_dim).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conditioning import NoiseEmbedding
from .memory import run_layers
from .noise import NoiseConfig, block_ranges, partition, route, sample_sigma, scalings

SHARED_POLICIES = ("cotrained", "frozen")


class SharedParts(nn.Module):
    """The target space all blocks share: the clean target, the loss, the sampler's estimate.

    The default is a continuous target with squared error and no parameters; a task with
    discrete targets subclasses it (a label or token table, logits, a projected estimate).
    """

    def condition(self, x: Tensor) -> Tensor | None:
        """Extra conditioning added to the noise embedding (e.g. a class label); none by default."""
        return None

    def target(self, y: Tensor) -> Tensor:
        """The clean target in target space (identity for continuous targets)."""
        return y

    def example_loss(self, denoised: Tensor, y: Tensor) -> Tensor:
        """Per-example loss ℓ(D, y), shape (N,); squared error by default."""
        return (denoised - self.target(y)).flatten(1).pow(2).sum(1)

    def estimate(self, denoised: Tensor) -> Tensor:
        """The denoised estimate a sampler steps toward (discrete targets project it)."""
        return denoised


class TokenSpace(SharedParts):
    """Discrete targets (class labels, characters) as a table of unit-length embeddings.

    Unit length (as the paper) hides the token from the noisy input for σ ≳ 0.5. Logits are
    read out of D against the same normalized table, the loss is cross-entropy (averaged over
    positions for sequences), and the sampler steps toward softmax(logits) @ table (METHOD §8;
    the released code uses the raw table).
    """

    def __init__(self, num_tokens: int, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.table = nn.Embedding(num_tokens, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def embeddings(self) -> Tensor:
        """The normalized table used for targets, logits and the sampler."""
        return F.normalize(self.table.weight, dim=1)

    def target(self, y: Tensor) -> Tensor:
        return self.embeddings()[y]

    def logits(self, denoised: Tensor) -> Tensor:
        """Logits of D against the normalized table, times the (learned) logit scale."""
        return denoised @ self.embeddings().T * self.logit_scale.exp()

    def example_loss(self, denoised: Tensor, y: Tensor) -> Tensor:
        logits = self.logits(denoised)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        return ce.view(len(y), -1).mean(1)

    def estimate(self, denoised: Tensor) -> Tensor:
        return self.logits(denoised).softmax(-1) @ self.embeddings()

    @torch.no_grad()
    def read_out_of(self, head: nn.Linear, c_out: float) -> tuple[Tensor, Tensor]:
        """Weight and bias of a read-out F = A·h + a whose logits, at D = c_out·F, are the
        ``head``'s: s·c_out·(A·h + a)·Tᵀ = W·h + b, by the table's pseudo-inverse (pretrained
        conversion). Exact when the table's rows are independent (tokens ≤ dimensions)."""
        table = self.embeddings()
        if table.shape[0] > table.shape[1]:  # then T·pinv(T) is a projection, not the identity
            raise ValueError(f"{table.shape[0]} tokens in a {table.shape[1]}-dimensional table: a "
                             "head cannot be converted exactly; use a width of at least the tokens")
        inverse = torch.linalg.pinv(table) / (self.logit_scale.exp() * c_out)  # (embed, tokens)
        return inverse @ head.weight, inverse @ head.bias


class Adapter(nn.Module):
    """A block's own way in and out of its layers; subclasses give ``encode`` and ``decode``.

    ``queries``: when ``decode`` reads only the first that many tokens (a [CLS] read-out), the
    block's last layer computes only those; None: every token.
    """

    queries: int | None = None

    def condition(self, x: Tensor) -> Tensor | None:
        """This block's conditioning from ``x``, added to its noise embedding; none by default."""
        return None

    def encode(self, x: Tensor, z_in: Tensor) -> Tensor:
        """The hidden sequence from the input ``x`` and the c_in-scaled noisy target."""
        raise NotImplementedError

    def decode(self, h: Tensor, c: Tensor) -> Tensor:
        """F in target space from the last hidden sequence (``c``: the conditioning vector)."""
        raise NotImplementedError

    def attention_mask(self, x: Tensor) -> Tensor | None:
        """Which tokens may attend to which (True: allowed), passed to every layer; None: all."""
        return None


def split_layers(num_layers: int, blocks: int, split: Sequence[int] | None = None) -> list[int]:
    """Layer counts per block. Even by default; an uneven split must be asked for."""
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    if blocks > num_layers:
        raise ValueError(
            f"cannot cut {num_layers} layers into {blocks} blocks: every block needs a layer; "
            f"use at most {num_layers} blocks or a deeper model"
        )
    if split is not None:
        split = [int(s) for s in split]
        if len(split) != blocks or sum(split) != num_layers or min(split) < 1:
            raise ValueError(
                f"split {split} must have {blocks} positive layer counts summing to {num_layers}"
            )
        return split
    if num_layers % blocks:
        even = [num_layers // blocks + (i < num_layers % blocks) for i in range(blocks)]
        raise ValueError(
            f"{num_layers} layers do not split evenly into {blocks} blocks; pass an explicit "
            f"split such as {even} (layers per block) or choose blocks dividing {num_layers}"
        )
    return [num_layers // blocks] * blocks


class Block(nn.Module):
    """One block: its adapter (input stem, read-out), noise embedding and run of layers."""

    def __init__(
        self, layers: Sequence[nn.Module], cond_dim: int, adapter: Adapter, checkpointing: bool = False
    ):
        super().__init__()
        self.adapter = adapter
        self.noise_embed = NoiseEmbedding(cond_dim)
        self.layers = nn.ModuleList(layers)
        self.checkpointing = checkpointing  # activation checkpointing of each layer

    def forward(self, x: Tensor, z_in: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """F_b(c_in·z, c_noise; x): the raw network output in target space."""
        c = self.noise_embed(c_noise)
        for extra in (cond, self.adapter.condition(x)):
            if extra is not None:
                c = c + extra
        mask = self.adapter.attention_mask(x)
        args = (c,) if mask is None else (c, mask)
        h = run_layers(self.layers, self.adapter.encode(x, z_in), *args, checkpointing=self.checkpointing,
                       queries=self.adapter.queries)
        return self.adapter.decode(h, c)


class DiffusionBlocks(nn.Module):
    """B denoisers, one per noise range, that together walk a target from noise to clean."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        shared: SharedParts,
        adapter: Callable[[], Adapter],
        blocks: int,
        cond_dim: int,
        noise: NoiseConfig | None = None,
        split: Sequence[int] | None = None,
        shared_policy: str = "cotrained",
        checkpointing: bool = False,
    ):
        super().__init__()
        if shared_policy not in SHARED_POLICIES:
            raise ValueError(
                f"unknown shared policy {shared_policy!r}; choose one of {', '.join(SHARED_POLICIES)}"
            )
        layers = list(layers)
        self.noise = noise or NoiseConfig()
        self.sizes = split_layers(len(layers), blocks, split)
        starts = [sum(self.sizes[:b]) for b in range(blocks)]
        self.blocks = nn.ModuleList(
            Block(layers[s : s + n], cond_dim, adapter(), checkpointing) for s, n in zip(starts, self.sizes)
        )
        self.shared = shared
        self.shared_policy = shared_policy
        if shared_policy == "frozen":
            shared.requires_grad_(False)
        # Plain attributes, not buffers: noise ranges are config, never checkpoint state.
        self.bounds = partition(self.noise, blocks)
        self.ranges = block_ranges(self.noise, blocks)

    @property
    def num_blocks(self) -> int:
        """B, the number of blocks."""
        return len(self.blocks)

    def route(self, sigma: float | Tensor) -> int:
        """The block that owns noise level σ."""
        return route(sigma, self.bounds)

    def sample_sigma(self, block: int, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Per-example training σ for ``block``: the log-normal truncated to its widened range."""
        lo, hi = self.ranges[block]
        return sample_sigma(self.noise, n, lo, hi, generator)

    def denoise(
        self, z: Tensor, sigma: Tensor | float, x: Tensor, block: int | None = None
    ) -> Tensor:
        """Preconditioned denoiser D_b(z, σ; x) = c_skip·z + c_out·F_b(c_in·z, c_noise; x).

        ``sigma`` is a scalar or one value per example. Without ``block``, the block that owns
        σ is used (all examples must then share one block).
        """
        if block is None:
            owners = {self.route(s) for s in torch.as_tensor(sigma).flatten().tolist()}
            if len(owners) > 1:
                raise ValueError(
                    f"σ values of one call belong to blocks {sorted(owners)}; "
                    "pass block= explicitly or call once per block"
                )
            block = owners.pop()
        sigma = torch.as_tensor(sigma, dtype=z.dtype, device=z.device).expand(z.shape[0])
        shape = (-1,) + (1,) * (z.dim() - 1)
        c_skip, c_out, c_in, c_noise = (s.view(shape) for s in scalings(sigma, self.noise.sigma_data))
        out = self.blocks[block](x, c_in * z, c_noise.flatten(), self.shared.condition(x))
        return c_skip * z + c_out * out

    def denoiser(self, x: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """A sampler-ready callable ``(z, σ) -> estimate`` that routes σ to its block."""
        return lambda z, sigma: self.shared.estimate(self.denoise(z, sigma, x))

    @torch.no_grad()
    def adopt(self, layers: Sequence[nn.Module], head: nn.Linear, adapter: Callable[[Adapter], None]) -> None:
        """Pretrained conversion: start each block as a trained end-to-end model cut to its own
        layers. Block b takes copies of its run of ``layers`` (each layer's ``adopt``, exact at
        every σ), ``adapter(block.adapter)`` copies the end-to-end stem and final norm into it,
        and its ``read_out`` gives the ``head``'s logits at the block's central σ through the
        token table (:meth:`TokenSpace.read_out_of`)."""
        if len(layers) != sum(self.sizes):
            raise ValueError(f"the end-to-end model has {len(layers)} layers, this one {sum(self.sizes)}")
        for block, (lo, hi), start in zip(self.blocks, self.ranges, itertools.accumulate([0, *self.sizes])):
            for layer, plain in zip(block.layers, layers[start:]):
                layer.adopt(plain)
            adapter(block.adapter)
            _, c_out, _, _ = scalings(torch.tensor(math.sqrt(lo * hi)), self.noise.sigma_data)
            weight, bias = self.shared.read_out_of(head, c_out.item())
            block.adapter.read_out.weight.copy_(weight)
            block.adapter.read_out.bias.copy_(bias)

    def parts(self) -> dict[str, nn.Module]:
        """Separately trainable and storable parts: ``shared`` and ``block_0`` … ``block_{B-1}``."""
        blocks = {f"block_{b}": getattr(blk, "module", blk) for b, blk in enumerate(self.blocks)}
        return {"shared": self.shared, **blocks}  # a block wrapped in DDP is stored unwrapped
