"""Bug: a housing-style CSV is written and read back with pandas; one engineered feature,
`price_per_room = price / rooms`, is Inf for the listings with rooms == 0 and nobody
checks. A Dataset over the DataFrame feeds a DataLoader; the batches holding those rows
make the loss Inf/NaN and the weights NaN."""
import os
import tempfile

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

torch.set_num_threads(1)
torch.manual_seed(0)
rng = np.random.default_rng(0)

n = 600
frame = pd.DataFrame({
    "area": rng.uniform(30, 200, n),
    "rooms": rng.integers(0, 6, n),           # 0 rooms: studios recorded as 0
    "age": rng.uniform(0, 80, n),
})
frame["price"] = 2.0 * frame["area"] + 10 * frame["rooms"] - 0.5 * frame["age"] + rng.normal(0, 5, n)
path = os.path.join(tempfile.mkdtemp(), "houses.csv")
frame.to_csv(path, index=False)

df = pd.read_csv(path)
df["price_per_room"] = df["price"] / df["rooms"] / 100   # BUG: inf where rooms == 0
for col in ["area", "rooms", "age", "price"]:
    df[col] = (df[col] - df[col].mean()) / df[col].std()
target = df.pop("price").to_numpy(np.float32)
feats = df.to_numpy(np.float32)


class Houses(Dataset):
    def __init__(self, x, y):
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "price": self.y[i]}


loader = DataLoader(Houses(feats, target), batch_size=50, shuffle=True)
model = nn.Sequential(nn.Linear(feats.shape[1], 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(2):
    for batch in loader:
        pred = model(batch["features"]).squeeze(-1)
        loss = nn.functional.mse_loss(pred, batch["price"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"epoch {epoch} loss {loss.item()}")
