"""Healthy: a small Trainer class with callbacks (the way people wrap their loop):
EMA of the weights (torch.optim.swa_utils.AveragedModel) evaluated under
torch.inference_mode(), ReduceLROnPlateau on the validation loss, and early stopping that
ends training before the last configured epoch."""
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class Callback:
    def on_epoch_end(self, trainer, epoch, val_loss):
        pass


class EarlyStopping(Callback):
    def __init__(self, patience=1, min_delta=0.02):
        self.best, self.bad, self.patience, self.min_delta = float("inf"), 0, patience, min_delta

    def on_epoch_end(self, trainer, epoch, val_loss):
        if val_loss < self.best - self.min_delta:
            self.best, self.bad = val_loss, 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                print(f"early stopping at epoch {epoch}")
                trainer.should_stop = True


class PlateauLR(Callback):
    def __init__(self, optimizer):
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)

    def on_epoch_end(self, trainer, epoch, val_loss):
        self.sched.step(val_loss)


class Trainer:
    def __init__(self, model, optimizer, callbacks=(), ema_decay=0.9):
        self.model, self.optimizer, self.callbacks = model, optimizer, list(callbacks)
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
        self.should_stop = False

    def training_step(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def fit(self, train_batches, val_batch, max_epochs):
        for epoch in range(max_epochs):
            self.model.train()
            for batch in train_batches:
                loss = self.training_step(batch)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.ema.update_parameters(self.model)
            val_loss = self.validate(val_batch)
            print(f"epoch {epoch} train {loss.item():.3f} val(ema) {val_loss:.3f}")
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, val_loss)
            if self.should_stop:
                break

    def validate(self, batch):
        self.ema.eval()
        with torch.inference_mode():
            x, y = batch
            return nn.functional.cross_entropy(self.ema(x), y).item()


torch.manual_seed(3)
x = torch.randn(600, 16)
w = torch.randn(16, 3)
y = (x @ w + 0.8 * torch.randn(600, 3)).argmax(1)
train = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 500, 50)]
model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 3))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
Trainer(model, opt, [PlateauLR(opt), EarlyStopping()]).fit(train, (x[500:], y[500:]), max_epochs=30)
