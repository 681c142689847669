"""Text from local files (or a Hugging Face ``datasets`` set), as character or byte tokens.

``--data`` takes a path to any UTF-8 text file, ``tinyshakespeare`` (DATA/tinyshakespeare/
input.txt, with DATA as for images: ``--data-dir``, ``$DIFFUSIONBLOCKS_DATA`` or ``./data``),
``text8`` (DATA/text8/text8: 10^8 characters, so the split below is the standard 90M/5M/5M), or
``hf:NAME[:CONFIG]`` for a ``datasets`` set with a ``text`` column (needs that package and the
data in its cache). The text is split contiguously: the first 90% trains, the next 5% validates,
the last 5% tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .images import data_dir, on_device

NAMED = {"tinyshakespeare": "tinyshakespeare/input.txt", "text8": "text8/text8", "lm1b": "lm1b/lm1b.txt"}
TOKENIZERS = ("char", "byte", "bpe")  # or the path of a tokenizer.json
SPLITS = (0.9, 0.05, 0.05)


def check_tokenizer(kind: str) -> None:
    if kind not in TOKENIZERS and not kind.endswith(".json"):
        raise ValueError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZERS)} or give "
                         "the path of a tokenizer.json")


def _bpe():
    try:
        import tokenizers
    except ImportError:
        raise ValueError("the bpe tokenizer needs the tokenizers package: "
                         "pip install 'diffusionblocks[bpe]'") from None
    return tokenizers


class Tokenizer:
    """Characters (the vocabulary is the sorted set of characters of the whole text, as
    nanoGPT's char-level models), raw UTF-8 bytes (256 tokens, any text), or subwords: a
    byte-level BPE (Hugging Face ``tokenizers``) trained on the training split, or read from a
    ``tokenizer.json``. ``chars`` is the state a checkpoint keeps: the characters, or the BPE's
    JSON."""

    def __init__(self, kind: str, chars: str | None = None):
        check_tokenizer(kind)
        source = f"tokenizer file {kind} is " if kind.endswith(".json") else "the tokenizer state is "
        if kind.endswith(".json"):  # a tokenizer file: its JSON is the state from now on
            try:
                chars = chars or Path(kind).read_text(encoding="utf-8")
            except FileNotFoundError:
                raise ValueError(f"tokenizer file {kind} does not exist") from None
            except UnicodeDecodeError as e:
                raise ValueError(f"tokenizer file {kind} is not a tokenizer.json (not UTF-8 at byte "
                                 f"{e.start})") from None
            kind = "bpe"
        if kind in ("char", "bpe") and not chars:
            raise ValueError(f"a {kind} tokenizer needs its vocabulary (fit it on the training text)")
        self.kind, self.chars = kind, chars if kind != "byte" else None
        self.index = {c: i for i, c in enumerate(chars)} if kind == "char" else None
        self.subwords = None
        if kind == "bpe":
            try:
                self.subwords = _bpe().Tokenizer.from_str(chars)
            except Exception as e:  # noqa: BLE001 - the package raises a bare Exception
                raise ValueError(f"{source}not a tokenizer.json ({str(e)[:120]})") from None

    @classmethod
    def fit(cls, kind: str, text: str, vocab_size: int = 4096) -> Tokenizer:
        """A tokenizer of ``kind`` for ``text``; bpe learns ``vocab_size`` byte-level subwords."""
        if kind == "bpe":
            tk = _bpe()
            bpe = tk.Tokenizer(tk.models.BPE())
            bpe.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
            bpe.decoder = tk.decoders.ByteLevel()
            trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                             initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
            bpe.train_from_iterator([text], trainer)
            return cls("bpe", bpe.to_str())
        return cls(kind, "".join(sorted(set(text))) if kind == "char" else None)

    @property
    def vocab_size(self) -> int:
        if self.kind == "bpe":
            return self.subwords.get_vocab_size()
        return len(self.chars) if self.kind == "char" else 256

    def encode(self, text: str) -> Tensor:
        if self.kind == "byte":
            return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
        if self.kind == "bpe":
            return torch.tensor(self.subwords.encode(text).ids, dtype=torch.long)
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise ValueError(
                f"characters {''.join(unknown)!r} are not in the model's vocabulary "
                f"({self.vocab_size} characters); use only characters of its training text"
            )
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids: Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if self.kind == "byte":
            return bytes(ids).decode("utf-8", errors="replace")
        if self.kind == "bpe":
            return self.subwords.decode(ids)
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        return cls(d["kind"], d.get("chars"))


@dataclass
class TextData:
    """Token ids of the three contiguous splits, and the tokenizer that made them."""

    train: Tensor
    val: Tensor
    test: Tensor
    tokenizer: Tokenizer
    characters: tuple[int, int, int] | None = None  # per split, where tokens are not characters

    def chars_per_token(self, split: str) -> float:
        """Characters per token of ``split``: bits per character = bits per token / this."""
        if self.characters is None:
            return 1.0
        ids = getattr(self, split)
        return self.characters[("train", "val", "test").index(split)] / len(ids)


def read_text(source: str, root: str | Path | None = None) -> str:
    """The text behind ``source``: a file path, a named set, or ``hf:NAME[:CONFIG]``."""
    if source.startswith("hf:"):
        return _hf_text(source[3:])
    path = data_dir(root) / NAMED[source] if source in NAMED else Path(source)
    if not path.is_file():
        where = f"--data-dir / $DIFFUSIONBLOCKS_DATA ({path.parent.parent})" if source in NAMED else "--data"
        raise FileNotFoundError(
            f"text file {path} does not exist; point {where} at it. Any UTF-8 text file works "
            f"(--data path/to/file.txt); Tiny Shakespeare is {NAMED['tinyshakespeare']} in the "
            "shared data folder"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                         "convert it, e.g. iconv -f latin1 -t utf-8") from None


def _hf_text(spec: str) -> str:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"--data hf:{spec} needs the `datasets` package (pip install datasets)") from None
    name, _, config = spec.partition(":")
    parts = datasets.load_dataset(name, config or None)
    return "\n".join(t for split in parts.values() for t in split["text"])


def load_text(source: str, root: str | Path | None = None, tokenizer: str | Tokenizer = "char",
              bpe_vocab: int = 4096) -> TextData:
    """Tokenize ``source`` and split it 90/5/5, in order (no shuffling: no leak across splits).
    Subwords split the characters instead, and a BPE learns from the training split alone."""
    text = read_text(source, root)
    if len(text) < 1000:
        raise ValueError(f"{source} holds {len(text)} characters; a language model needs at least 1,000")
    if tokenizer == "bpe" or isinstance(tokenizer, str) and tokenizer.endswith(".json") or \
            isinstance(tokenizer, Tokenizer) and tokenizer.kind == "bpe":
        a = int(SPLITS[0] * len(text))
        b = a + int(SPLITS[1] * len(text))
        pieces = (text[:a], text[a:b], text[b:])
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else (
            Tokenizer.fit("bpe", pieces[0], bpe_vocab) if tokenizer == "bpe" else Tokenizer(tokenizer))
        return TextData(*(tok.encode(p) for p in pieces), tok, tuple(len(p) for p in pieces))
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.fit(tokenizer, text)
    ids = tok.encode(text)
    a = int(SPLITS[0] * len(ids))
    b = a + int(SPLITS[1] * len(ids))
    return TextData(ids[:a], ids[a:b], ids[b:], tok)


class Windows:
    """Step t's batch of random training windows (N, T), reproducible from (seed, t); the tokens
    live on ``device`` when they fit (:func:`on_device`); the window starts are drawn there always."""

    def __init__(self, ids: Tensor, batch_size: int, length: int, seed: int, device=None):
        if len(ids) <= length:
            raise ValueError(f"{len(ids)} training tokens cannot fill a window of {length}")
        self.device = torch.device(device or "cpu")
        (self.ids,) = on_device((ids,), self.device)
        self.batch_size, self.length, self.seed = batch_size, length, seed
        self.offsets = torch.arange(length, device=self.ids.device)

    def __call__(self, t: int) -> Tensor:
        g = torch.Generator(self.device).manual_seed(self.seed * 1_000_033 + t)  # the same draws
        starts = torch.randint(len(self.ids) - self.length, (self.batch_size,), generator=g,  # wherever
                               device=self.device).to(self.ids.device)  # the tokens live
        return self.ids[starts[:, None] + self.offsets].to(self.device)

