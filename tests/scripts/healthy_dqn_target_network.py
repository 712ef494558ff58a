"""A DQN on a tiny deterministic chain environment written inline: epsilon-greedy acting
with the online network under no_grad (in training mode: it has no Dropout/BatchNorm),
a replay buffer, a target network synced by load_state_dict every 25 steps, Huber loss on
the TD error, gradient clipping by value, Adam. Healthy."""
import random
from collections import deque

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
random.seed(0)

N_STATES, N_ACTIONS, GAMMA = 8, 2, 0.9


def env_step(s, a):
    s2 = min(s + 1, N_STATES - 1) if a == 1 else max(s - 1, 0)
    return s2, float(s2 == N_STATES - 1), s2 == N_STATES - 1


def one_hot(s):
    v = torch.zeros(N_STATES)
    v[s] = 1.0
    return v


def qnet():
    return nn.Sequential(nn.Linear(N_STATES, 32), nn.ReLU(), nn.Linear(32, N_ACTIONS))


online, target = qnet(), qnet()
target.load_state_dict(online.state_dict())
opt = torch.optim.Adam(online.parameters(), lr=1e-3)
buffer = deque(maxlen=500)
state, eps, updates = 0, 1.0, 0
for t in range(400):
    if random.random() < eps:
        action = random.randrange(N_ACTIONS)
    else:
        with torch.no_grad():
            action = online(one_hot(state)).argmax().item()
    nxt, reward, done = env_step(state, action)
    buffer.append((state, action, reward, nxt, done))
    state = 0 if done else nxt
    eps = max(0.05, eps * 0.99)
    if len(buffer) >= 64 and t % 4 == 0:
        batch = random.sample(buffer, 32)
        s = torch.stack([one_hot(b[0]) for b in batch])
        a = torch.tensor([b[1] for b in batch])
        r = torch.tensor([b[2] for b in batch])
        s2 = torch.stack([one_hot(b[3]) for b in batch])
        d = torch.tensor([float(b[4]) for b in batch])
        with torch.no_grad():
            q_next = target(s2).max(1).values
        q = online(s).gather(1, a[:, None]).squeeze(1)
        loss = nn.functional.smooth_l1_loss(q, r + GAMMA * (1 - d) * q_next)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_value_(online.parameters(), 1.0)
        opt.step()
        updates += 1
        if updates % 25 == 0:
            target.load_state_dict(online.state_dict())
            print(f"t {t} updates {updates} loss {loss.item():.4f} eps {eps:.2f}")
