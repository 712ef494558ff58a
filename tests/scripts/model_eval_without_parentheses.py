"""Bug: `model.eval` without the call parentheses (a no-op attribute access) before a
validation under `torch.inference_mode()`; the CNN's BatchNorm and Dropout stay in
training mode for every validation batch."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(71)

imgs = torch.randn(600, 3, 10, 10)
labels = (imgs[:, 0].mean((1, 2)) > imgs[:, 1].mean((1, 2))).long()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 12, 3), nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveMaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(48, 2))

    def forward(self, x):
        return self.fc(self.conv(x))


net = Net()
opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9, nesterov=True)
for epoch in range(4):
    net.train()
    for i in range(0, 480, 40):
        opt.zero_grad()
        nn.functional.cross_entropy(net(imgs[i:i + 40]), labels[i:i + 40]).backward()
        opt.step()
    net.eval                                      # BUG: not called
    with torch.inference_mode():
        correct = sum((net(imgs[i:i + 60]).argmax(1) == labels[i:i + 60]).sum().item()
                      for i in range(480, 600, 60))
    print(f"epoch {epoch} val acc {correct / 120:.3f}")
