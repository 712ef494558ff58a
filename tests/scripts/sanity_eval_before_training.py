"""Bug: a baseline validation ("what does the untrained model score?") runs before the
training loop, and `validate()` switches the model to eval mode. The epoch loop never
calls model.train(), so the *whole* training runs in eval mode: Dropout off, BatchNorm
normalising with its initial running statistics (mean 0, var 1) and never updating them."""
import torch
from torch import nn
from torch.utils.data import DataLoader

from synthetic_data import quadrant_images

torch.set_num_threads(1)
torch.manual_seed(3)

train_loader = DataLoader(quadrant_images(384, seed=3), batch_size=32, shuffle=True)
val_loader = DataLoader(quadrant_images(96, seed=4), batch_size=96)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3), nn.Linear(8 * 36, 4))
opt = torch.optim.Adam(model.parameters(), lr=2e-3)


def validate():
    model.eval()
    with torch.no_grad():
        x, y = next(iter(val_loader))
        return (model(x).argmax(1) == y).float().mean().item()


print(f"untrained val acc {validate():.3f}")
for epoch in range(2):                     # BUG: no model.train() anywhere
    for x, y in train_loader:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    print(f"epoch {epoch} loss {loss.item():.3f} val acc {validate():.3f}")
