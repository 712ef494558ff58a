"""Healthy: advantage actor-critic (REINFORCE with a learned baseline, advantages
normalised per episode) on a toy corridor environment written inline. The policy loss is
-log pi(a|s) * advantage: its sign flips from episode to episode and it is noisy by
nature; acting runs under no_grad in train mode (the policy has no dropout or batch norm,
so diagnose says so at info only)."""
import torch
from torch import nn
from torch.distributions import Categorical

torch.set_num_threads(1)
torch.manual_seed(3)


class Corridor:
    """Walk left/right on 8 cells; +1 at the right end, -0.01 per move, 20 moves at most."""

    def __init__(self, n=8):
        self.n = n

    def reset(self):
        self.pos, self.t = 0, 0
        return self._obs()

    def _obs(self):
        return torch.nn.functional.one_hot(torch.tensor(self.pos), self.n).float()

    def step(self, action):
        self.pos = max(0, min(self.n - 1, self.pos + (1 if action == 1 else -1)))
        self.t += 1
        done = self.pos == self.n - 1 or self.t >= 20
        reward = 1.0 if self.pos == self.n - 1 else -0.01
        return self._obs(), reward, done


class ActorCritic(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n, 32), nn.Tanh())
        self.pi = nn.Linear(32, 2)
        self.v = nn.Linear(32, 1)

    def forward(self, s):
        h = self.body(s)
        return self.pi(h), self.v(h).squeeze(-1)


env = Corridor()
net = ActorCritic(env.n)
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
gamma = 0.97

for episode in range(60):
    states, actions, rewards = [], [], []
    s, done = env.reset(), False
    while not done:
        with torch.no_grad():
            logits, _ = net(s)
        a = Categorical(logits=logits).sample().item()
        s2, r, done = env.step(a)
        states.append(s); actions.append(a); rewards.append(r)
        s = s2
    returns, g = [], 0.0
    for r in reversed(rewards):
        g = r + gamma * g
        returns.append(g)
    returns = torch.tensor(returns[::-1])
    logits, values = net(torch.stack(states))
    logp = Categorical(logits=logits).log_prob(torch.tensor(actions))
    advantage = returns - values.detach()
    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    loss = -(logp * advantage).mean() + 0.5 * (returns - values).pow(2).mean() \
        - 0.01 * Categorical(logits=logits).entropy().mean()
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), 0.5)
    opt.step()
    if episode % 10 == 0:
        print(f"episode {episode} length {len(rewards)} loss {loss.item():.4f}")
