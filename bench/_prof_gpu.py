import sys, time, statistics, cProfile, pstats, io, tempfile
sys.path.insert(0, "bench")
import torch
from overhead import build, step_fn, variant_context
from pathlib import Path
from diagnose import Monitor
dev = torch.device("cuda")
setup = build("gpt2", dev, 8, 1024)
opt = torch.optim.AdamW(setup.model.parameters(), lr=1e-4, fused=True)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=100000)
scaler = torch.amp.GradScaler("cuda")
step = step_fn(setup, opt, sched, scaler)
tmp = Path(tempfile.mkdtemp())
noop = lambda loss: None
def timed(n):
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): step(noop)
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n
for _ in range(5): step(noop)
res = {"bare": [], "mon": [], "mon_grad_every_1000": []}
for r in range(6):
    res["bare"].append(timed(30))
    with Monitor(tmp / f"a{r}", model=setup.model, optimizer=opt, scheduler=sched, scaler=scaler):
        timed(3); res["mon"].append(timed(30))
    with Monitor(tmp / f"b{r}", model=setup.model, optimizer=opt, scheduler=sched, scaler=scaler, grad_every=1000, param_every=1000):
        timed(3); res["mon_grad_every_1000"].append(timed(30))
for k, v in res.items():
    print(k, "median ms %.2f" % (statistics.median(v) * 1e3), [round(x * 1e3, 1) for x in v])
# CPU-side time per step (no sync): how long the host spends issuing one step
def host(n):
    t = time.perf_counter()
    for _ in range(n): step(noop)
    h = (time.perf_counter() - t) / n; torch.cuda.synchronize(); return h
print("host bare ms %.2f" % (host(30) * 1e3))
with Monitor(tmp / "c", model=setup.model, optimizer=opt, scheduler=sched, scaler=scaler):
    host(3); print("host mon ms %.2f" % (host(30) * 1e3))
    pr = cProfile.Profile(); pr.enable(); host(30); pr.disable()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25); print(s.getvalue()[:6000])
