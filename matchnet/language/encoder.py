"""Sentence encoders f' = g' for the one-shot language task: a sentence with a blank -> one vector.

The paper says only "a simple encoding model" (section 4.1.3) and "a simple form word embedding" (2.1.1). The
variants here, from simplest up:

  bow           mean of the word embeddings (the blank has its own embedding)
  lstm          a left-to-right LSTM; its state after the last word
  bilstm        a bidirectional LSTM; the last forward state and the first backward state, concatenated
  bilstm-blank  a bidirectional LSTM read out at the (first) blank: the forward state there has read the left
                context, the backward state the right context, so the vector describes the gap, not the sentence

Input: token ids [B, T], padded with PAD_ID at the end. Padding never changes an embedding: a left-to-right
LSTM reaches the padding only after the last real token, the right-to-left one reads each sentence reversed in
place (its padding stays at the end), and the mean counts real tokens only. The LSTMs run on the padded batch,
not on packed sequences: on a CPU, autograd through a packed LSTM allocates a zero tensor the size of the whole
batch for every time step, which made the backward pass ten times the forward (about 3x slower training).
"""
from __future__ import annotations

import torch
from torch import nn

from .vocab import BLANK_ID, PAD_ID

KINDS = ("bow", "lstm", "bilstm", "bilstm-blank")


def reverse_in_place(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> each row's first lengths[b] steps reversed, the padding after them left where it is."""
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    index = torch.where(t < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - t, t)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class SentenceEncoder(nn.Module):
    def __init__(self, vocab_size: int, kind: str = "bilstm-blank", embed_dim: int = 128, hidden: int = 128,
                 layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"encoder kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(dropout)
        self.lstm = None
        if kind == "bow":
            self.out_dim = embed_dim
        elif kind == "lstm":
            self.lstm = nn.LSTM(embed_dim, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
            self.out_dim = hidden
        else:  # one left-to-right and one right-to-left LSTM per layer; a layer reads both of the one below
            sizes = [embed_dim] + [2 * hidden] * (layers - 1)
            self.forward_lstms = nn.ModuleList(nn.LSTM(n, hidden, batch_first=True) for n in sizes)
            self.backward_lstms = nn.ModuleList(nn.LSTM(n, hidden, batch_first=True) for n in sizes)
            self.out_dim = 2 * hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T] token ids -> [B, out_dim]."""
        mask = tokens != PAD_ID
        lengths = mask.sum(1).clamp(min=1)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        x = self.drop(self.embedding(tokens))
        if self.kind == "bow":
            return self.drop((x * mask.unsqueeze(-1)).sum(1) / lengths.unsqueeze(-1))
        if self.kind == "lstm":
            out, _ = self.lstm(x)
            return self.drop(out[rows, lengths - 1])  # the top layer's state after each sentence's last real token
        for layer, (fwd, bwd) in enumerate(zip(self.forward_lstms, self.backward_lstms)):
            if layer > 0:
                x = self.drop(x)  # between layers, as nn.LSTM's dropout
            ahead, _ = fwd(x)
            back, _ = bwd(reverse_in_place(x, lengths))
            back = reverse_in_place(back, lengths)  # back[b, t] has read tokens len-1 down to t
            x = torch.cat([ahead, back], dim=-1)
        if self.kind == "bilstm":  # top layer: forward after the last token, backward after the first
            return self.drop(torch.cat([ahead[rows, lengths - 1], back[:, 0]], dim=-1))
        # The first blank of each sentence (episodes blank every occurrence of the label word; 95% of sentences
        # hold one); a sentence without a blank reads position 0.
        where = (tokens == BLANK_ID).float().argmax(1)
        return self.drop(x[rows, where])
