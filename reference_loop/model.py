"""Models of the embedded tasks: a small CNN (images) and a small GPT-style transformer (chars).

Both expose `probe`: the nn.Linear whose output goes through a ReLU/GELU, the layer the
`dead-units` and `params-not-updated` injections act on, and `leak_site`: a module whose
output is ~1 MiB per default batch, which the `memory-leak` injection's hook keeps. So the
injections work on either model without knowing its layout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # No conv bias: the BatchNorm right after it subtracts the mean anyway.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """conv-bn-relu x2 -> pool -> conv-bn-relu -> pool -> global average -> MLP head.

    At width 32: ~34k parameters, ~4 MFLOP per 3x16x16 image forward.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.1, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(3, width), conv_block(width, width), nn.MaxPool2d(2),
            conv_block(width, 2 * width), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc1 = nn.Linear(2 * width, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    @property
    def probe(self) -> nn.Linear:
        return self.fc1

    @property
    def leak_site(self) -> nn.Module:
        return self.features[3]  # 2*width x 8 x 8 per image: 1 MiB per batch of 64 at width 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(self.features(x)))
        return self.fc2(self.dropout(h))


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # The fused kernel where there is one; dropout only in training mode.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(n_embd), CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2, self.mlp = nn.LayerNorm(n_embd), MLP(n_embd, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """A pre-norm GPT: token + position embeddings, n_layer blocks, final norm, linear head."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 2, n_head: int = 4,
                 n_embd: int = 64, dropout: float = 0.1):
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # GPT-2's init: N(0, 0.02) weights, zero biases; keeps early logits near uniform.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def probe(self) -> nn.Linear:
        return self.blocks[0].mlp.fc

    @property
    def leak_site(self) -> nn.Module:
        return self.blocks[-1]  # block_size x n_embd per sequence: 1 MiB per default batch

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # B x T x vocab


class CharLSTM(nn.Module):
    """Embedding, one `nn.LSTM` built with `batch_first=False`, linear head: the chars
    task's recurrent model (the rnn-batch-first-mismatch injection). Takes (B, T) token ids
    like CharTransformer; `batch_major=False` transposes them to the (T, B, E) the LSTM
    expects, `batch_major=True` is the bug: (B, T, E) goes in, and the LSTM recurs across
    the batch."""

    def __init__(self, vocab_size: int, n_embd: int = 64, batch_major: bool = False):
        super().__init__()
        self.batch_major = batch_major
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.rnn = nn.LSTM(n_embd, n_embd)  # batch_first=False: expects (seq, batch, features)
        self.head = nn.Linear(n_embd, vocab_size)

    @property
    def probe(self) -> nn.Linear:
        return self.head

    @property
    def leak_site(self) -> nn.Module:
        return self.rnn

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)  # B x T x n_embd
        if self.batch_major:
            out, _ = self.rnn(x)  # the bug: the LSTM reads dimension 0 (the batch) as time
        else:
            out, _ = self.rnn(x.transpose(0, 1))
            out = out.transpose(0, 1)
        return self.head(out)  # B x T x vocab


def build_model(cfg, num_classes: int) -> nn.Module:
    if cfg.task == "images":
        return SmallCNN(num_classes, cfg.width, cfg.dropout)
    if "rnn-batch-first-mismatch" in cfg.inject:
        return CharLSTM(num_classes, cfg.n_embd, batch_major=True)
    return CharTransformer(num_classes, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout)
