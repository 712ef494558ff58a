"""Bug: the model's forward() ends with F.softmax (so that predict() returns
probabilities), and training feeds those probabilities to F.cross_entropy, which applies
log_softmax again."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Classifier(nn.Module):
    def __init__(self, n_in, n_classes):
        super().__init__()
        self.hidden = nn.Linear(n_in, 64)
        self.logits = nn.Linear(64, n_classes)

    def forward(self, x):
        return F.softmax(self.logits(F.relu(self.hidden(x))), dim=1)  # BUG for training


torch.manual_seed(0)
protos = torch.randn(4, 8) * 1.5
labels = torch.randint(0, 4, (640,))
feats = protos[labels] + torch.randn(640, 8)
clf = Classifier(8, 4)
opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
for epoch in range(2):
    perm = torch.randperm(640)
    for i in range(0, 640, 64):
        idx = perm[i:i + 64]
        probs = clf(feats[idx])
        loss = F.cross_entropy(probs, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")
