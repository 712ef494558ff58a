"""Bug: the optimizer is created, then the script "resumes" by building a fresh model and
loading a checkpoint into it (`model = build_model(); model.load_state_dict(...)`). The
optimizer still holds the first model's parameters: the trained model's weights never
move while the loss is computed and backpropagated on them."""
import io

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(61)


def build_model():
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


model = build_model()
optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)

buffer = io.BytesIO()                    # a "pretrained" checkpoint, made in place
torch.save({"model": build_model().state_dict()}, buffer)
buffer.seek(0)
checkpoint = torch.load(buffer)
model = build_model()                    # BUG: a new model after the optimizer was built
model.load_state_dict(checkpoint["model"])

X = torch.randn(1000, 8)
y = X.pow(2).sum(1, keepdim=True) / 8
for epoch in range(3):
    for i in range(0, 1000, 50):
        optimizer.zero_grad()
        loss = nn.functional.smooth_l1_loss(model(X[i:i + 50]), y[i:i + 50])
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")
