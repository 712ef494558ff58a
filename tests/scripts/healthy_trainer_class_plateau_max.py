"""A small image classifier driven by a hand-rolled `Experiment` class with the usual
`train_one_epoch()` / `evaluate()` pair; the LR is cut by ReduceLROnPlateau watching the
validation *accuracy* (mode="max"), and the best weights are kept in memory by state_dict
copy. Healthy."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, random_split

from synthetic_data import quadrant_images

torch.set_num_threads(1)


class ConvNet(nn.Module):
    def __init__(self, n_classes=4):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(16, n_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.c1(x))), 2)
        x = F.relu(self.c2(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.drop(x))


class Experiment:
    def __init__(self, seed=0):
        torch.manual_seed(seed)
        data = quadrant_images(480, seed=seed)
        train, val = random_split(data, [384, 96], generator=torch.Generator().manual_seed(seed))
        self.train_loader = DataLoader(train, batch_size=32, shuffle=True)
        self.val_loader = DataLoader(val, batch_size=48)
        self.net = ConvNet()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="max", factor=0.5,
                                                                  patience=0)
        self.best = (-1.0, None)

    def train_one_epoch(self):
        self.net.train()
        running = 0.0
        for images, targets in self.train_loader:
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.net(images), targets)
            loss.backward()
            self.opt.step()
            running += loss.item()
        return running / len(self.train_loader)

    @torch.no_grad()
    def evaluate(self):
        self.net.eval()
        correct = total = 0
        for images, targets in self.val_loader:
            correct += (self.net(images).argmax(1) == targets).sum().item()
            total += len(targets)
        return correct / total

    def fit(self, epochs):
        for epoch in range(epochs):
            train_loss = self.train_one_epoch()
            acc = self.evaluate()
            self.plateau.step(acc)
            if acc > self.best[0]:
                self.best = (acc, copy.deepcopy(self.net.state_dict()))
            print(f"epoch {epoch} train_loss {train_loss:.4f} val_acc {acc:.3f} "
                  f"lr {self.opt.param_groups[0]['lr']:.4f}")
        self.net.load_state_dict(self.best[1])


if __name__ == "__main__":
    Experiment().fit(epochs=4)
