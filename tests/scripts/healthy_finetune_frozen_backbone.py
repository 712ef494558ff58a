"""Healthy: transfer learning. A "pretrained" CNN backbone is frozen (requires_grad
False, kept in eval mode so its BatchNorm statistics stay put) and a new head is trained
with Adam; the backbone's features are computed under no_grad."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.features(x)


torch.manual_seed(1)
backbone = Backbone()
for p in backbone.parameters():
    p.requires_grad_(False)
backbone.eval()  # frozen: keep the running statistics of the "pretrained" weights

head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))
opt = torch.optim.Adam(head.parameters(), lr=3e-3)

images = torch.randn(256, 1, 12, 12)
labels = torch.randint(0, 4, (256,))
images += labels.view(-1, 1, 1, 1).float() * 0.5  # make the classes separable
loader = DataLoader(TensorDataset(images[:192], labels[:192]), batch_size=24, shuffle=True)
val_x, val_y = images[192:], labels[192:]
loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)

for epoch in range(3):
    head.train()
    for xb, yb in loader:
        with torch.no_grad():
            feats = backbone(xb)
        logits = head(feats)
        loss = loss_fn(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        acc = (head(backbone(val_x)).argmax(1) == val_y).float().mean()
    print(f"epoch {epoch}: train loss {loss.item():.3f} val acc {acc.item():.2f}")
