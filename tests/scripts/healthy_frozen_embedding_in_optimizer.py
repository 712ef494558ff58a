"""Text classification with "pretrained" word vectors kept frozen by
`embedding.weight.requires_grad = False`, while the optimizer is still built from
`model.parameters()` (so it holds the frozen tensor too; Adam skips parameters without a
gradient). Mean-pooled bag of embeddings + MLP, NLLLoss on log_softmax, StepLR per
epoch. Healthy: the frozen embedding is meant not to change."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(6)

VOCAB, DIM, LEN = 200, 24, 16
pretrained = torch.randn(VOCAB, DIM)
ids = torch.randint(1, VOCAB, (800, LEN))
label = (pretrained[ids].mean(1)[:, :2].sum(1) > 0).long()


class BagClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(pretrained.clone(), freeze=False)
        self.embedding.weight.requires_grad = False      # frozen word vectors
        self.mlp = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, tokens):
        return F.log_softmax(self.mlp(self.embedding(tokens).mean(1)), dim=-1)


model = BagClassifier()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
for epoch in range(4):
    model.train()
    for b in range(0, 640, 64):
        optimizer.zero_grad()
        loss = F.nll_loss(model(ids[b:b + 64]), label[b:b + 64])
        loss.backward()
        optimizer.step()
    scheduler.step()
    model.eval()
    with torch.no_grad():
        acc = (model(ids[640:]).argmax(1) == label[640:]).float().mean().item()
    print(f"epoch {epoch} loss {loss.item():.3f} acc {acc:.3f}")
