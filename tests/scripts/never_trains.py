"""Never trains: builds a model and an optimizer, evaluates, and exits (a script whose
training loop never ran, e.g. an empty dataset). Exit code 0, no optimizer step."""
import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
train_batches = []  # the filter below dropped every sample
for x, y in train_batches:
    pass
model.eval()
with torch.no_grad():
    for _ in range(3):
        model(torch.randn(4, 8))
print("done")
