"""Healthy: a Hugging Face-style causal LM written by hand. The model is called with
keyword arguments only (`model(input_ids=..., labels=...)`) and returns a dict holding the
loss; the output projection is tied to the token embedding; the blocks use activation
checkpointing (torch.utils.checkpoint, recomputed in backward); AdamW with a no-decay
group for biases and norms, linear warm-up then decay, clip_grad_value_."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

torch.manual_seed(0)
VOCAB, CTX, DIM = 40, 16, 32


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, DIM)
        self.wpe = nn.Parameter(torch.zeros(CTX, DIM))
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.ln_f = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        nn.init.normal_(self.wte.weight, std=0.02)

    def forward(self, input_ids=None, labels=None):
        t = input_ids.shape[1]
        mask = torch.full((t, t), float("-inf")).triu(1)
        x = self.wte(input_ids) + self.wpe[:t]
        for block in self.blocks:
            x = checkpoint(block, x, mask, use_reentrant=False) if self.training else block(x, mask)
        logits = self.lm_head(self.ln_f(x))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
        return out


# a corpus with structure: counting sequences modulo VOCAB with random starts and strides
starts, strides = torch.randint(0, VOCAB, (512, 1)), torch.randint(1, 4, (512, 1))
corpus = (starts + strides * torch.arange(CTX)) % VOCAB
model = TinyLM()
decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                         {"params": no_decay, "weight_decay": 0.0}], lr=3e-3)
total, warmup = 24, 4
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: min((s + 1) / warmup, max(0.1, (total - s) / (total - warmup))))
model.train()
for step in range(total):
    batch = corpus[torch.randint(0, 480, (16,))]
    out = model(input_ids=batch, labels=batch)
    out["loss"].backward()
    torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    if step % 8 == 7:
        model.eval()
        with torch.no_grad():
            val = model(input_ids=corpus[480:], labels=corpus[480:])["loss"]
        model.train()
        print(f"step {step + 1} train {out['loss'].item():.3f} val {val.item():.3f}")
