"""Full-batch L-BFGS on a smooth regression problem (fitting a small MLP to a 1-D function),
the classic closure style: zero_grad, forward, loss, backward inside `closure()`, and
`optimizer.step(closure)` calls it several times per step (max_iter=5). Healthy."""
import torch

torch.set_num_threads(1)
torch.manual_seed(0)

x = torch.linspace(-3, 3, 256).unsqueeze(1)
y = torch.sin(2 * x) + 0.3 * x

mlp = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                          torch.nn.Tanh(), torch.nn.Linear(32, 1))
lbfgs = torch.optim.LBFGS(mlp.parameters(), lr=0.5, max_iter=5, history_size=10,
                          line_search_fn="strong_wolfe")


def closure():
    lbfgs.zero_grad()
    loss = torch.nn.functional.mse_loss(mlp(x), y)
    loss.backward()
    return loss


for it in range(25):
    loss = lbfgs.step(closure)
    if it % 5 == 0:
        print(f"iter {it} mse {loss.item():.5f}")
with torch.no_grad():
    print("final mse", torch.nn.functional.mse_loss(mlp(x), y).item())
