"""Sentence encoders f' = g' for the one-shot language task: a sentence with a blank -> one vector.

The paper says only "a simple encoding model" (section 4.1.3) and "a simple form word embedding" (2.1.1). The
variants here, from simplest up:

  bow           mean of the word embeddings (the blank has its own embedding)
  lstm          a left-to-right LSTM; its state after the last word
  bilstm        a bidirectional LSTM; the last forward state and the first backward state, concatenated
  bilstm-blank  a bidirectional LSTM read out at the (first) blank: the forward state there has read the left
                context, the backward state the right context, so the vector describes the gap, not the sentence

Input: token ids [B, T], padded with PAD_ID at the end. Padding never changes an embedding: the LSTMs run on
packed sequences and the mean counts real tokens only.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .vocab import BLANK_ID, PAD_ID

KINDS = ("bow", "lstm", "bilstm", "bilstm-blank")


class SentenceEncoder(nn.Module):
    def __init__(self, vocab_size: int, kind: str = "bilstm-blank", embed_dim: int = 128, hidden: int = 128,
                 layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"encoder kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(dropout)
        if kind == "bow":
            self.lstm = None
            self.out_dim = embed_dim
        else:
            bidirectional = kind != "lstm"
            self.lstm = nn.LSTM(embed_dim, hidden, layers, batch_first=True, bidirectional=bidirectional,
                                dropout=dropout if layers > 1 else 0.0)
            self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T] token ids -> [B, out_dim]."""
        mask = tokens != PAD_ID
        lengths = mask.sum(1)
        x = self.drop(self.embedding(tokens))
        if self.kind == "bow":
            return self.drop((x * mask.unsqueeze(-1)).sum(1) / lengths.clamp(min=1).unsqueeze(-1))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        if self.kind == "lstm":
            return self.drop(h[-1])  # the top layer's state after each sentence's last real token
        if self.kind == "bilstm":
            return self.drop(torch.cat([h[-2], h[-1]], dim=-1))  # top layer: forward last, backward first
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])  # [B, T, 2H]
        # The first blank of each sentence (episodes blank every occurrence of the label word; 95% of sentences
        # hold one); a sentence without a blank reads position 0.
        where = (tokens == BLANK_ID).float().argmax(1)
        return self.drop(out[torch.arange(tokens.shape[0], device=tokens.device), where])
