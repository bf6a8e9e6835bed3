"""The one preprocessing path: image decode/resize/normalize and WordPiece tokenization.

Numpy, Pillow and `tokenizers` only (no torch), so that training, calibration, parity, bench and the
embedded runtime all turn the same inputs into the same tensors.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from toolkit.errors import ToolkitError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, bytes]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class PreprocessError(ToolkitError):
    """An input cannot be turned into a tensor; the message names the input and the fix."""


# --------------------------------------------------------------------------------------- images


def load_image(src: ImageInput, size: int) -> np.ndarray:
    """Decode any supported image input to RGB uint8 (size, size, 3).

    Accepts a path, PNG/JPEG bytes, a PIL image, or an HWC/HW uint8 array. Normalizations:
    grayscale (L, 1-channel arrays), palette, CMYK and other 8-bit modes are converted to RGB; RGBA
    and LA have their alpha composited on white (the dataset's background); 16-bit and 32-bit
    grayscale (I;16, I, F) are scaled to 0..255 by their own range (PIL's convert would clip them)
    and then to RGB; any size, 1x1 included, is resized to (size, size) bilinearly. Refused with a
    PreprocessError: 0-sized arrays or images, non-uint8 arrays, other shapes, unreadable or
    truncated files, and images over Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS).
    """
    if isinstance(src, np.ndarray):
        img = _array_to_pil(src)
    elif isinstance(src, Image.Image):
        img = src
    elif isinstance(src, (bytes, bytearray)):
        img = _open(io.BytesIO(src), "<bytes>")
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise PreprocessError(f"image not found: {path}; check the path")
        img = _open(path, str(path))
    else:
        raise PreprocessError(f"unsupported image input of type {type(src).__name__}; pass a path, "
                              "bytes, a PIL image or an HWC uint8 array")
    if img.width == 0 or img.height == 0:
        raise PreprocessError(f"image has size {img.width}x{img.height}; pass a non-empty image")
    try:
        return _to_rgb(img, size)
    except (OSError, ValueError, SyntaxError) as e:  # a lazy PIL image that fails to decode here
        raise PreprocessError(f"image cannot be converted to RGB ({e}); pass an 8-bit image")


def _to_rgb(img: Image.Image, size: int) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Scale by the image's own range: PIL's convert("L") clips 16-bit values above 255.
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise PreprocessError("image holds non-finite values (NaN or inf); pass finite pixels")
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        img = Image.fromarray(np.round(a).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _open(fp, name: str) -> Image.Image:
    try:
        img = Image.open(fp)
        img.load()
    except Image.DecompressionBombError as e:  # not an OSError: Pillow's guard on pixel count
        raise PreprocessError(f"{name} is too large to decode safely ({e}); pass a smaller "
                              "image") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise PreprocessError(f"{name} is not a readable image ({e}); replace or remove it") from e
    return img


def _array_to_pil(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8:
        raise PreprocessError(f"image array has dtype {a.dtype}; pass uint8 values in 0..255")
    if a.size == 0:
        raise PreprocessError(f"image array has shape {a.shape}, no pixels; pass a non-empty "
                              "(H, W, 3) image")
    if a.ndim == 2:
        return Image.fromarray(a, "L")
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        if a.shape[2] == 1:
            return Image.fromarray(a[:, :, 0], "L")
        return Image.fromarray(np.ascontiguousarray(a), "RGB" if a.shape[2] == 3 else "RGBA")
    raise PreprocessError(f"image array has shape {a.shape}; pass (H, W), (H, W, 1), (H, W, 3) "
                          "or (H, W, 4)")


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, scaled to [0, 1] then standardized."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise PreprocessError(f"expected (B, H, W, 3) uint8 images, got {images.shape} "
                              f"{images.dtype}")
    x = images.astype(np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------------------- text


def train_vocab(texts: Iterable[str], vocab_size: int) -> list[str]:
    """A lowercase WordPiece vocabulary for `texts`: BERT's special tokens, every character (alone
    and as a ``##`` continuation, so nothing is ever [UNK]), then the most frequent whole words.

    The `tokenizers` WordPiece trainer breaks ties between merges differently from run to run, so
    the same data gave different vocabularies; counting words after BERT's own normalizer and
    pre-tokenizer is deterministic and, for short questions, keeps every word one token.
    """
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text, n in Counter(texts).items():  # questions repeat: normalize each distinct one once
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            counts[w] += n
    chars = sorted({c for w in counts for c in w})
    alphabet = chars + [f"##{c}" for c in chars]
    room = max(0, vocab_size - len(SPECIAL_TOKENS) - len(alphabet))
    ranked = sorted((w for w in counts if w not in chars), key=lambda w: (-counts[w], w))
    return list(SPECIAL_TOKENS) + alphabet + sorted(ranked[:room])


@dataclass
class Tokenizer:
    """BERT-style WordPiece: lowercase, [CLS] text [SEP], right padding with [PAD] = id 0."""

    vocab: list[str]
    max_length: int

    def __post_init__(self) -> None:
        from tokenizers import BertWordPieceTokenizer

        missing = [t for t in SPECIAL_TOKENS[:4] if t not in self.vocab]
        if missing:
            raise PreprocessError(f"vocabulary lacks special token(s) {missing}; it is not a BERT "
                                  "WordPiece vocabulary")
        self._tok = BertWordPieceTokenizer({t: i for i, t in enumerate(self.vocab)},
                                           lowercase=True)
        self._tok.enable_truncation(self.max_length)
        self.pad_id = self.vocab.index("[PAD]")

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_length: int) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise PreprocessError(f"vocabulary file not found: {path}")
        try:
            vocab = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise PreprocessError(f"{path} is not a UTF-8 vocabulary file ({e.reason}); the run "
                                  "is damaged") from e
        if len(set(vocab)) != len(vocab):
            raise PreprocessError(f"{path} repeats tokens; it is not a WordPiece vocabulary")
        return cls(vocab, max_length)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text("\n".join(self.vocab) + "\n", encoding="utf-8")

    def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise PreprocessError("pass a list of texts, not a single string")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise PreprocessError(f"text #{i} is empty; every image needs a non-empty question")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate: not text the tokenizer can take
                raise PreprocessError(f"text #{i} is not valid Unicode ({e.reason} at "
                                      f"{e.start}); pass well-formed text") from None
        distinct = list(dict.fromkeys(texts))  # a dataset asks the same questions many times
        ids = dict(zip(distinct, (e.ids for e in self._tok.encode_batch(distinct))))
        for i, t in enumerate(texts):
            # BERT's normalizer drops control and zero-width characters: nothing but [CLS] [SEP]
            # left means the model would answer a question that is not there.
            if len(ids[t]) <= 2:
                raise PreprocessError(f"text #{i} has no words once control characters are "
                                      f"removed ({t[:20]!r}); pass a question")
        return [list(ids[t]) for t in texts]

    def __call__(self, texts: Sequence[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Token ids and attention mask, (B, L) int64; L is the longest text or `pad_to`."""
        return pad(self.encode_ids(texts), self.pad_id, pad_to)


def pad(ids: Sequence[Sequence[int]], pad_id: int, pad_to: int | None = None
        ) -> dict[str, np.ndarray]:
    length = max(len(x) for x in ids) if pad_to is None else pad_to
    input_ids = np.full((len(ids), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), length), dtype=np.int64)
    for i, row in enumerate(ids):
        row = row[:length]
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
