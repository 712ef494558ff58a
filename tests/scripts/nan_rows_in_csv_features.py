"""Bug: features parsed from a CSV where a few rows have missing values (NaN) that nobody
imputed. The in-memory tensor is sliced into batches by hand; the first batch that holds
a NaN row turns the loss, the gradients and then every weight into NaN."""
import io

import numpy as np
import torch
import torch.nn as nn

rng = np.random.default_rng(0)
rows = ["a,b,c,d,label"]
for i in range(400):
    a, b, c, d = rng.normal(size=4)
    if i in (203, 317):
        c = ""  # missing value
    rows.append(f"{a},{b},{c},{d},{int(a + b > 0)}")
table = np.genfromtxt(io.StringIO("\n".join(rows)), delimiter=",", skip_header=1)
X = torch.tensor(table[:, :4], dtype=torch.float32)
y = torch.tensor(table[:, 4], dtype=torch.float32).unsqueeze(1)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
bce = nn.BCEWithLogitsLoss()
for epoch in range(2):
    for i in range(0, 400, 25):
        opt.zero_grad()
        loss = bce(model(X[i:i + 25]), y[i:i + 25])
        loss.backward()
        opt.step()
    print(f"epoch {epoch} loss {loss.item()}")
