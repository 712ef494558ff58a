"""Healthy: a tiny speech-style recogniser: a bidirectional LSTM over time-major (T, N, F)
features, log_softmax over the alphabet and `nn.CTCLoss` with per-sample input and target
lengths (targets concatenated in a 1-D tensor), Adam with gradient clipping, greedy
decoding of a held-out batch under no_grad in eval mode."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(89)

ALPHABET, T, FEAT = 6, 30, 12          # class 0 is the CTC blank
prototypes = torch.randn(ALPHABET, FEAT)


def make_batch(n):
    """Each sample: 2-5 symbols, each held for 4-6 frames, plus noise; T frames padded."""
    feats = torch.zeros(T, n, FEAT)
    targets, target_lengths, input_lengths = [], [], []
    for b in range(n):
        labels = torch.randint(1, ALPHABET, (int(torch.randint(2, 6, ())),))
        frames = [prototypes[c].expand(int(torch.randint(4, 7, ())), FEAT) for c in labels]
        seq = torch.cat(frames)[:T]
        feats[:len(seq), b] = seq + 0.3 * torch.randn_like(seq)
        targets.append(labels)
        target_lengths.append(len(labels))
        input_lengths.append(len(seq))
    return feats, torch.cat(targets), torch.tensor(input_lengths), torch.tensor(target_lengths)


class Recogniser(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(FEAT, 32, bidirectional=True)       # time-major, as CTCLoss wants
        self.out = nn.Linear(64, ALPHABET)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.out(h).log_softmax(-1)                    # (T, N, C)


model = Recogniser()
ctc = nn.CTCLoss(blank=0, zero_infinity=True)
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for step in range(60):
    x, targets, in_len, tgt_len = make_batch(16)
    loss = ctc(model(x), targets, in_len, tgt_len)
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    if step % 10 == 0:
        print(f"step {step} ctc {loss.item():.3f}")

model.eval()
with torch.no_grad():
    x, targets, in_len, tgt_len = make_batch(8)
    best = model(x).argmax(-1)                                # greedy: collapse repeats, drop blanks
    decoded = [[int(c) for k, c in enumerate(best[:n, b]) if c != 0 and (k == 0 or c != best[k - 1, b])]
               for b, n in enumerate(in_len.tolist())]
print("decoded", decoded[:2], "targets", targets[:int(tgt_len[0])].tolist())
