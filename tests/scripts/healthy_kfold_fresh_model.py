"""5-fold cross-validation on a tabular binary task: a fresh model, optimizer and
scheduler for every fold (the usual sklearn-style KFold loop written by hand), each fold
trained a few epochs and scored on its held-out part; the mean AUC-ish accuracy at the end.
Healthy: every fold starts from random weights, so the loss jumps back up at each fold's
start on purpose."""
import torch
import torch.nn as nn

torch.set_num_threads(1)
torch.manual_seed(42)

N, D, K = 400, 12, 5
features = torch.randn(N, D)
w_true = torch.randn(D)
labels = ((features @ w_true + 0.3 * torch.randn(N)) > 0).float()
perm = torch.randperm(N)
folds = perm.chunk(K)


def make_model():
    return nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1))


scores = []
for k in range(K):
    val_idx = folds[k]
    train_idx = torch.cat([folds[j] for j in range(K) if j != k])
    model = make_model()
    optim = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=0.9)
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(3):
        model.train()
        order = train_idx[torch.randperm(len(train_idx))]
        for b in range(0, len(order), 40):
            idx = order[b:b + 40]
            logits = model(features[idx]).squeeze(-1)
            loss = loss_fn(logits, labels[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(features[val_idx]).squeeze(-1) > 0
        acc = (pred.float() == labels[val_idx]).float().mean().item()
    scores.append(acc)
    print(f"fold {k}: acc {acc:.3f}")
print(f"cv accuracy {sum(scores) / K:.3f}")
