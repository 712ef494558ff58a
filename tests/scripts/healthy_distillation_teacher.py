"""Healthy: knowledge distillation. A larger teacher is trained first (its own optimizer,
2 epochs), then frozen in eval mode; the student learns from the teacher's soft targets
(KL divergence at temperature 4, teacher forward under no_grad) plus the hard labels."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(512, 20)
y = (x[:, :6] @ torch.randn(6, 4)).argmax(1)
teacher = nn.Sequential(nn.Linear(20, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 4))
student = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))

t_opt = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
for epoch in range(2):
    teacher.train()
    for i in range(0, 512, 64):
        t_opt.zero_grad()
        F.cross_entropy(teacher(x[i:i + 64]), y[i:i + 64]).backward()
        t_opt.step()

teacher.eval()
for p in teacher.parameters():
    p.requires_grad_(False)
s_opt = torch.optim.Adam(student.parameters(), lr=3e-3)
T, alpha = 4.0, 0.7
for epoch in range(3):
    student.train()
    for i in range(0, 512, 64):
        xb, yb = x[i:i + 64], y[i:i + 64]
        with torch.no_grad():
            soft = F.softmax(teacher(xb) / T, dim=1)
        logits = student(xb)
        kd = F.kl_div(F.log_softmax(logits / T, dim=1), soft, reduction="batchmean") * T * T
        loss = alpha * kd + (1 - alpha) * F.cross_entropy(logits, yb)
        s_opt.zero_grad()
        loss.backward()
        s_opt.step()
    print(f"epoch {epoch} student loss {loss.item():.3f}")
