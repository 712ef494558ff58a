"""Embedded tasks: nothing is downloaded, everything is generated or shipped.

images: 10 classes of 3x16x16 images. Each class is an oriented sine grating with its own
orientation, spatial frequency and colour; every sample gets a random phase (a shift) and
amplitude, plus Gaussian noise. A class cannot be read off one pixel, so a small CNN has
to learn the pattern: with the default noise it goes from chance to ~85-90% in 5 epochs.

chars: a character-level language model on a few KB of text shipped in
`reference_loop/data/`; windows of `block_size + 1` characters, the last `val_fraction`
of the text held out.

Both build their tensors once, in memory, from a seeded torch.Generator: the same config
yields the same data on every machine, and there is no file I/O in the loop.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, default_collate

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 16, 16)
# The class patterns are fixed (this seed), the samples come from the config's seed, so
# changing `seed` gives a new draw of the same task rather than a different task.
_PATTERN_SEED = 1234


def make_images(n: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (float32, N x 3 x 16 x 16) and their labels (int64), deterministic in seed."""
    g = torch.Generator().manual_seed(_PATTERN_SEED)
    angle = (torch.arange(NUM_CLASSES) * math.pi / NUM_CLASSES)[torch.randperm(NUM_CLASSES, generator=g)]
    freq = 1.5 + 1.5 * torch.rand(NUM_CLASSES, generator=g)  # cycles per image
    color = torch.randn(NUM_CLASSES, 3, generator=g)
    color = color / color.norm(dim=1, keepdim=True)

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    coords = torch.linspace(-0.5, 0.5, IMAGE_SHAPE[1])
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    a, f = angle[y].view(n, 1, 1), freq[y].view(n, 1, 1)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    amplitude = 0.5 + torch.rand(n, 1, 1, generator=g)
    wave = amplitude * torch.sin(2 * math.pi * f * (xx * torch.cos(a) + yy * torch.sin(a)) + phase)
    x = color[y].view(n, 3, 1, 1) * wave.unsqueeze(1)
    x = x + noise * torch.randn(n, *IMAGE_SHAPE, generator=g)
    return x, y


class TensorPairs(Dataset):
    """(x[i], y[i]) pairs from two tensors: a map-style dataset, batched by the DataLoader."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        assert len(x) == len(y)
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def default_text() -> str:
    """The text shipped with the package (public-domain-style fables written for it)."""
    return resources.files("reference_loop").joinpath("data/fables.txt").read_text("utf-8")


class CharWindows(Dataset):
    """Windows of block_size + 1 characters, starting every `stride` characters:
    input is the first block_size, target the same shifted by one."""

    def __init__(self, data: torch.Tensor, block_size: int, stride: int):
        if len(data) < block_size + 1:
            raise ValueError(f"text split of {len(data)} characters is shorter than block_size + 1 = {block_size + 1}")
        self.data, self.block_size, self.stride = data, block_size, stride
        self.n = (len(data) - block_size - 1) // stride + 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.data[i * self.stride : i * self.stride + self.block_size + 1]
        return chunk[:-1], chunk[1:]


@dataclass
class TaskData:
    train: Dataset
    val: Dataset
    num_classes: int
    """Classes (images) or vocabulary size (chars)."""
    vocab: str = ""
    """chars: the characters, in index order."""


def build_datasets(cfg) -> TaskData:
    """The config's task as train and validation datasets."""
    if cfg.task == "images":
        x, y = make_images(cfg.train_samples + cfg.val_samples, cfg.seed, cfg.image_noise)
        n = cfg.train_samples
        return TaskData(TensorPairs(x[:n], y[:n]), TensorPairs(x[n:], y[n:]), NUM_CLASSES)

    text = Path(cfg.text_path).read_text("utf-8") if cfg.text_path else default_text()
    vocab = "".join(sorted(set(text)))
    index = {ch: i for i, ch in enumerate(vocab)}
    data = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    split = int(len(data) * (1 - cfg.val_fraction))
    # Overlapping windows (an eighth of a block apart) make ~750 training samples of the
    # shipped ~7 KB text: 12 steps per epoch at batch 64, 60 in the default 5 epochs.
    # Validation windows do not overlap, so each character is scored once.
    train = CharWindows(data[:split], cfg.block_size, max(1, cfg.block_size // 8))
    val = CharWindows(data[split:], cfg.block_size, cfg.block_size)
    return TaskData(train, val, len(vocab), vocab)


def slow_collate(batch, delay_s: float):
    """default_collate after a sleep: the dataloader-bottleneck injection."""
    time.sleep(delay_s)
    return default_collate(batch)


def build_loaders(cfg, data: TaskData, *, pin_memory: bool = False, rank: int = 0,
                  world_size: int = 1) -> tuple[DataLoader, DataLoader]:
    """Training loader (shuffled with its own seeded generator) and validation loader.

    With several ranks (`world_size` > 1) each rank loads its own part: the training
    loader through a DistributedSampler (shuffled by seed and epoch: call
    `loader.sampler.set_epoch(epoch)`; the last incomplete shard is dropped), the
    validation loader every `world_size`-th sample from `rank` on (no padding, so the
    ranks' summed scores count each sample once).

    The training loader's generator is the only RNG that decides the batch order; its state
    is saved in checkpoints, so a resumed run sees the same batches as an uninterrupted one.
    The last incomplete batch is dropped: every optimizer step sees the same number of
    samples, and BatchNorm never normalises a batch of one.
    """
    collate = default_collate
    straggler = "rank-straggler" in cfg.inject and world_size > 1 and rank == world_size - 1
    if "dataloader-bottleneck" in cfg.inject or straggler:
        collate = functools.partial(slow_collate, delay_s=cfg.slow_data_s)
    # No persistent_workers: a persistent iterator skips the per-epoch draw of the workers'
    # base seed from the generator, so a resumed run (a fresh iterator) would shuffle
    # differently from the uninterrupted one. Restarting workers costs ~0.1 s per epoch.
    common = dict(num_workers=cfg.num_workers, pin_memory=pin_memory)
    sampler, val_set = None, data.val
    if world_size > 1:
        sampler = DistributedSampler(data.train, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=cfg.seed, drop_last=True)
        val_set = Subset(data.val, range(rank, len(data.val), world_size))
    train = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                       drop_last=True, generator=torch.Generator().manual_seed(cfg.seed),
                       collate_fn=collate, **common)
    if len(train) == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {len(data.train)} training samples")
    # Validation keeps every sample (no drop_last); its own generator keeps it from drawing
    # worker seeds from the global RNG, so evaluating never shifts the training's dropout.
    val = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False,
                     generator=torch.Generator().manual_seed(cfg.seed + 1), **common)
    return train, val
