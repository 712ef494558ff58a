"""Healthy: a word-level LSTM language model the way the PyTorch word_language_model
example trains it: one long token stream batchified into (seq, batch) columns
(batch_first=False), truncated BPTT over 20-token windows with the hidden state detached
and carried from window to window, gradient clipping by hand, and the LR divided by 4
when the validation loss stops improving."""
import torch
import torch.nn as nn

torch.manual_seed(0)
VOCAB, BPTT, BATCH = 50, 20, 8
# a stream with structure: token t+1 = (t * 7 + 3) % VOCAB most of the time
stream = [0]
for _ in range(6000):
    stream.append((stream[-1] * 7 + 3) % VOCAB if torch.rand(()) < 0.8 else int(torch.randint(VOCAB, ())))
data = torch.tensor(stream)


def batchify(d, bsz):
    n = d.size(0) // bsz
    return d[:n * bsz].view(bsz, -1).t().contiguous()  # (seq, batch)


train_data, val_data = batchify(data[:5000], BATCH), batchify(data[5000:], BATCH)


class RNNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, 32)
        self.rnn = nn.LSTM(32, 64, num_layers=2, dropout=0.2)
        self.decoder = nn.Linear(64, VOCAB)

    def forward(self, inp, hidden):
        out, hidden = self.rnn(self.encoder(inp), hidden)
        return self.decoder(out), hidden

    def init_hidden(self, bsz):
        w = next(self.parameters())
        return (w.new_zeros(2, bsz, 64), w.new_zeros(2, bsz, 64))


def repackage(h):
    return tuple(v.detach() for v in h)


model = RNNModel()
criterion = nn.CrossEntropyLoss()
lr = 2.0
best_val = None


def evaluate(source):
    model.eval()
    total, hidden = 0.0, model.init_hidden(BATCH)
    with torch.no_grad():
        for i in range(0, source.size(0) - 1, BPTT):
            seq_len = min(BPTT, source.size(0) - 1 - i)
            out, hidden = model(source[i:i + seq_len], hidden)
            total += seq_len * criterion(out.view(-1, VOCAB), source[i + 1:i + 1 + seq_len].reshape(-1)).item()
    return total / (source.size(0) - 1)


for epoch in range(2):
    model.train()
    hidden = model.init_hidden(BATCH)
    for batch, i in enumerate(range(0, 400, BPTT)):
        inp, target = train_data[i:i + BPTT], train_data[i + 1:i + 1 + BPTT].reshape(-1)
        hidden = repackage(hidden)
        model.zero_grad()
        output, hidden = model(inp, hidden)
        loss = criterion(output.view(-1, VOCAB), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)  # plain SGD by hand, as in the PyTorch example
    val_loss = evaluate(val_data)
    print(f"epoch {epoch} val loss {val_loss:.3f} lr {lr}")
    if best_val is None or val_loss < best_val:
        best_val = val_loss
    else:
        lr /= 4.0
