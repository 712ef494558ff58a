"""Healthy: small CNN with BatchNorm and Dropout, SGD with momentum, StepLR stepped once
per epoch, a DataLoader with two persistent worker processes that prefetch the epoch
(the step is a few ms: workers started every epoch, or fetching just in time, would make
this tiny loop wait for data for real, and dataloader-bottleneck would be right),
evaluation under inference_mode."""
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from synthetic_data import quadrant_images


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 4))

    def forward(self, x):
        return self.head(self.features(x))


def main():
    torch.manual_seed(0)
    train_loader = DataLoader(quadrant_images(256, seed=1), batch_size=32, shuffle=True,
                              num_workers=2, persistent_workers=True, prefetch_factor=4)
    val_loader = DataLoader(quadrant_images(64, seed=2), batch_size=64)
    model = SmallCNN()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for epoch in range(2):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        correct = 0
        with torch.inference_mode():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        print(f"epoch {epoch} loss {loss.item():.4f} val_acc {correct / 64:.3f}")


if __name__ == "__main__":
    main()
