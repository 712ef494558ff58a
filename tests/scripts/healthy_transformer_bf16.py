"""Healthy: a small transformer language model on token ids, bf16 autocast on CPU,
AdamW with two parameter groups (no weight decay on biases and norms), linear warm-up
(LambdaLR) stepped per batch."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, LENGTH = 32, 16


class TinyLM(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.zeros(LENGTH, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, tokens):
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        h = self.encoder(self.embed(tokens) + self.pos, mask=mask, is_causal=True)
        return self.head(self.norm(h))


torch.manual_seed(0)
start = torch.randint(0, VOCAB, (256, 1))
seq = (start + torch.arange(LENGTH + 1)) % VOCAB
inputs, targets = seq[:, :-1], seq[:, 1:]

model = TinyLM()
decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                               {"params": no_decay, "weight_decay": 0.0}], lr=2e-3)
warmup, total = 4, 16
scheduler = torch.optim.lr_scheduler.LambdaLR(
    optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / total)))

for step in range(total):
    idx = torch.randint(0, len(inputs), (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(inputs[idx])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB).float(), targets[idx].reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
print(f"final loss {loss.item():.4f}")
