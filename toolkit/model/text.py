"""Text tower: a BERT-family encoder, built from a config or loaded from a local directory."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from toolkit.config import TextConfig
from toolkit.errors import ToolkitError


class TextModelError(ToolkitError):
    pass


def check_text_model_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise TextModelError(f"text model directory not found: {p}; pass a local Hugging Face "
                             "directory with config.json, weights and vocab.txt")
    for name in ("config.json", "vocab.txt"):
        if not (p / name).is_file():
            raise TextModelError(f"{p} has no {name}; a BERT-family directory needs config.json, "
                                 "model weights and vocab.txt")
    if not any((p / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        raise TextModelError(f"{p} has no model.safetensors or pytorch_model.bin")
    return p


class TextTower(nn.Module):
    """(B, L) token ids and mask -> (B, L, hidden_size) token states."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        # Eager attention: the same math on every backend and exporter, no fused-kernel surprises.
        if cfg.model_dir:
            path = check_text_model_dir(cfg.model_dir)
            try:
                self.encoder = AutoModel.from_pretrained(path, local_files_only=True,
                                                         add_pooling_layer=False,
                                                         attn_implementation="eager")
            except (OSError, ValueError, RuntimeError) as e:
                raise TextModelError(f"cannot load text model from {path}: {e}") from e
        else:
            bert = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                              intermediate_size=cfg.intermediate_size,
                              max_position_embeddings=max(cfg.max_length, 16),
                              hidden_dropout_prob=cfg.dropout,
                              attention_probs_dropout_prob=cfg.dropout,
                              attn_implementation="eager")
            self.encoder = BertModel(bert, add_pooling_layer=False)
            words = self.encoder.embeddings.word_embeddings
            nn.init.normal_(words.weight, std=cfg.embedding_std)
            if words.padding_idx is not None:  # BERT keeps the padding row at zero
                nn.init.zeros_(words.weight[words.padding_idx])
        self.hidden_size = self.encoder.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state  # (B, L, H)
