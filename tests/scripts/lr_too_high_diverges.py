"""Bug: the learning rate was meant to be 1e-2 and is 1e-1 (a typo in the config dict).
Plain SGD on a linear-ish regression with a few large-scale features: the updates
overshoot, the loss climbs by orders of magnitude and then overflows."""
import torch
import torch.nn as nn

torch.set_num_threads(1)
torch.manual_seed(9)

config = {"lr": 1e-1, "batch_size": 32, "epochs": 4}   # BUG: should be 1e-2

X = torch.randn(512, 6) * torch.tensor([1.0, 1.0, 1.0, 3.0, 3.0, 5.0])
Y = X @ torch.tensor([[0.5], [-1.0], [2.0], [0.3], [-0.2], [0.1]]) + 0.05 * torch.randn(512, 1)

net = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 1))
sgd = torch.optim.SGD(net.parameters(), lr=config["lr"])
step = 0
for epoch in range(config["epochs"]):
    for i in range(0, 512, config["batch_size"]):
        pred = net(X[i:i + config["batch_size"]])
        loss = ((pred - Y[i:i + config["batch_size"]]) ** 2).mean()
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        step += 1
    print(f"epoch {epoch} step {step} loss {loss.item():.4g}")
