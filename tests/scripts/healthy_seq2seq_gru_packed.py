"""Healthy: a seq2seq GRU (reverse a sequence of tokens) with packed, variable-length
source sequences, teacher forcing with a decaying ratio, and gradient clipping."""
import random

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

random.seed(0)
torch.manual_seed(0)
VOCAB, BOS, PAD = 12, 1, 0


class Seq2Seq(nn.Module):
    def __init__(self, hidden=48):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 24, padding_idx=PAD)
        self.encoder = nn.GRU(24, hidden, batch_first=True)
        self.decoder = nn.GRU(24, hidden, batch_first=True)
        self.out = nn.Linear(hidden, VOCAB)

    def forward(self, src, lengths, tgt, teacher_forcing):
        packed = pack_padded_sequence(self.emb(src), lengths, batch_first=True,
                                      enforce_sorted=False)
        enc_out, h = self.encoder(packed)
        enc_out, _ = pad_packed_sequence(enc_out, batch_first=True)
        token = torch.full((src.shape[0], 1), BOS, dtype=torch.long)
        logits = []
        for t in range(tgt.shape[1]):
            step_out, h = self.decoder(self.emb(token), h)
            step_logits = self.out(step_out)
            logits.append(step_logits)
            use_truth = random.random() < teacher_forcing
            token = tgt[:, t:t + 1] if use_truth else step_logits.argmax(-1)
        return torch.cat(logits, dim=1)


def make_batch(n=16):
    seqs = [torch.randint(2, VOCAB, (random.randint(3, 8),)) for _ in range(n)]
    lengths = torch.tensor([len(s) for s in seqs])
    src = pad_sequence(seqs, batch_first=True, padding_value=PAD)
    tgt = pad_sequence([s.flip(0) for s in seqs], batch_first=True, padding_value=PAD)
    return src, lengths, tgt


model = Seq2Seq()
optim = torch.optim.Adam(model.parameters(), lr=5e-3)
criterion = nn.CrossEntropyLoss(ignore_index=PAD)
for it in range(30):
    src, lengths, tgt = make_batch()
    ratio = max(0.2, 1.0 - it / 30)
    logits = model(src, lengths, tgt, ratio)
    loss = criterion(logits.reshape(-1, VOCAB), tgt.reshape(-1))
    optim.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optim.step()
    if it % 10 == 9:
        print(f"iter {it + 1} loss {loss.item():.3f} tf {ratio:.2f}")
