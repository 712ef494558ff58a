"""A real Hugging Face `Trainer` run that logs to TensorBoard, for `diagnose report LOGDIR`.

The tag names the HF Trainer writes (`train/loss`, `train/grad_norm`,
`train/learning_rate`, `eval/loss`, ...) were taken from its source; this runs the real
thing (a tiny GPT-2 built from a config, no download) so the TensorBoard reader is checked
against what the Trainer actually writes. Needs `transformers` (and `accelerate`).

    python bench/hf_trainer_logs.py --out /tmp/hf [--lr 5e-4] [--steps 120]
    diagnose report /tmp/hf/logs

`--lr 5` makes the run blow up on purpose (a too-high learning rate), for the report to
find.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    # a learnable toy language: repeating byte patterns with a little noise
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (64, 8), generator=g).repeat(1, 8)
    noise = torch.randint(0, 256, base.shape, generator=g)
    data = torch.where(torch.rand(base.shape, generator=g) < 0.05, noise, base)

    class Rows(torch.utils.data.Dataset):
        def __init__(self, rows: torch.Tensor) -> None:
            self.rows = rows

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.rows[i], "labels": self.rows[i]}

    import inspect
    import os

    logs = str(args.out / "logs")
    os.environ["TENSORBOARD_LOGGING_DIR"] = logs  # transformers >= 5.15 (logging_dir removed)
    where = {"logging_dir": logs} if "logging_dir" in inspect.signature(TrainingArguments).parameters else {}
    training = TrainingArguments(
        output_dir=str(args.out / "trainer"), **where, report_to=["tensorboard"], logging_steps=1, max_steps=args.steps,
        per_device_train_batch_size=8, learning_rate=args.lr, lr_scheduler_type="cosine",
        warmup_steps=10, eval_strategy="steps", eval_steps=20, save_strategy="no",
        max_grad_norm=1.0, bf16=torch.cuda.is_available(), seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=Rows(data[:56]),
                      eval_dataset=Rows(data[56:]))
    trainer.train()
    print("event files:", sorted(str(p) for p in (args.out / "logs").rglob("events*")))


if __name__ == "__main__":
    main()
