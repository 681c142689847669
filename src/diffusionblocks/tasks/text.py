"""What the language-model tasks share: the run config, the data, evaluation windows and the
side-by-side report."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from ..blocks import split_layers
from ..checks import check_at_least_one, check_choice, check_device_name, check_numbers
from ..data.text import TextData, Tokenizer, check_tokenizer, load_text
from ..models.lm import LMConfig
from ..noise import GRIDS
from ..sampling import SAMPLERS

MODES = ("e2e", "dblocks", "shallow")  # methods.ABOUT says what each trains
LN2 = math.log(2)
DECODINGS = ("sample", "paper")  # how next-token models continue text (see ar.generate)
TOP_P = 0.95  # the paper's nucleus for end-to-end models


@dataclass
class TextConfig:
    """Fields every language-model run has. ``steps`` is the end-to-end budget; DiffusionBlocks
    gets the same number of layer evaluations (B× the steps) unless ``match='steps'``."""

    MODES: ClassVar[tuple[str, ...]] = MODES

    mode: str = "dblocks"
    data: str = "tinyshakespeare"
    data_dir: str | None = None
    tokenizer: str = "char"  # char, byte, bpe, or the path of a tokenizer.json
    vocab: str | None = None  # the tokenizer's state (characters, or the BPE's JSON), from the data
    bpe_vocab: int = 4096  # subwords a bpe tokenizer learns from the training split
    blocks: int = 3
    split: list[int] | None = None
    steps: int = 2000
    match: str = "layers"
    batch_size: int = 32
    seed: int = 0
    evals: int = 5
    device: str = "auto"
    checkpointing: bool = False
    tensorboard: bool = False  # also log to OUT/tensorboard
    out: str = "runs/lm"
    lm: LMConfig = field(default_factory=LMConfig)

    def __post_init__(self) -> None:
        check_numbers(self)
        check_choice("mode", self.mode, self.MODES)
        check_tokenizer(self.tokenizer)
        check_choice("budget match", self.match, ("layers", "steps"))
        check_at_least_one(self, ("steps", "batch_size", "evals", "blocks"))
        check_device_name(self.device)
        if self.mode != "e2e":  # the shallow control is one block's depth
            split_layers(self.lm.depth, self.blocks, self.split)

    @property
    def num_blocks(self) -> int:
        return self.blocks if self.mode == "dblocks" else 1


def check_sampling(cfg, next_token: bool = False) -> None:
    """The sampling fields the language models share: temperature; for next-token models
    (ar, recurrent) also the sampler, grid, prompt, and learned positions only."""
    if cfg.temperature < 0:
        raise ValueError(f"temperature must be ≥ 0 (0: the most likely token), got {cfg.temperature}")
    if not next_token:
        return
    if cfg.lm.rope:
        raise ValueError("rotary positions (rope) are for masked diffusion: here noisy slots "
                         "share their position with a clean token; leave rope off")
    check_choice("sampler", cfg.sampler, SAMPLERS)
    check_choice("grid", cfg.grid, GRIDS)
    check_choice("decoding", cfg.decoding, DECODINGS)
    if cfg.prompt_length > cfg.lm.context:
        raise ValueError(f"prompt_length {cfg.prompt_length} exceeds the context {cfg.lm.context}")


def load_data(cfg: TextConfig) -> TextData:
    """The run's text, tokenized with the checkpoint's vocabulary when it has one."""
    tok = Tokenizer(cfg.tokenizer, cfg.vocab) if cfg.vocab or cfg.tokenizer == "byte" else cfg.tokenizer
    return load_text(cfg.data, cfg.data_dir, tok, cfg.bpe_vocab)


def per_character(result: dict, data: TextData, split: str = "test", name: str | None = None) -> dict:
    """``result``'s bits per token (``name``, default ``{split}_bpc``) as bits per character where
    tokens are subwords (the total bits over ``split``'s characters), bits per token beside."""
    name = name or f"{split}_bpc"
    if data.characters is None or name not in result:
        return result
    return result | {name.replace("bpc", "bits_per_token"): result[name],
                     name: result[name] / data.chars_per_token(split)}


def resolved(cfg: TextConfig, data: TextData) -> dict:
    """``cfg`` as a dict with what the data decides filled in: vocabulary and its size."""
    lm = asdict(cfg.lm) | {"vocab_size": data.tokenizer.vocab_size}
    return asdict(cfg) | {"vocab": data.tokenizer.chars, "lm": lm}


def windows(ids: Tensor, length: int, overlap: int = 0) -> list[Tensor]:
    """Consecutive windows of ``length`` tokens, each sharing ``overlap`` with the previous one,
    that together cover every token (the last may be shorter)."""
    step = length - overlap
    return [ids[i : i + length] for i in range(0, max(1, len(ids) - overlap), step)]


def batched(pieces: list[Tensor], batch: int):
    """Equal-length pieces in batches of ``batch`` (N, T), then any shorter last piece alone."""
    full = [p for p in pieces if len(p) == len(pieces[0])]
    for i in range(0, len(full), batch):
        yield torch.stack(full[i : i + batch])
    for p in pieces[len(full):]:
        yield p[None]


def write_comparison(out: Path, results: dict[str, dict], rows: list[tuple[str, str, str]],
                     judge: dict | None = None) -> str:
    """report.json (results per mode, and what the independent ``judge`` is) and report.md: a
    table of ``rows`` (label, key, format) and a line on the judge. Under torchrun rank 0 writes."""
    from ..parallel import main_process

    modes = list(results)
    lines = ["| | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for label, key, fmt in rows:
        cells = [format(results[m][key], fmt) if results[m].get(key) is not None else "—" for m in modes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    if judge:
        table += (f"\nIndependent judge: an end-to-end model of width {judge['width']} and depth "
                  f"{judge['depth']} ({judge['parameters']:,} parameters, the weights of its best "
                  f"validation score, at step {judge['best_step']:,} of {judge['trained_steps']:,}, seed "
                  f"{judge['seed']}); the test text itself scores {judge['test_bpc']:.3f} bits per "
                  "character under it.\n")
    if main_process():
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(results | ({"judge": judge} if judge else {}), indent=2))
        (out / "report.md").write_text(table)
    return table
