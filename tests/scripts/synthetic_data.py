"""Synthetic image data shared by the CNN scripts (imported as a sibling module, the way a
real project imports its own data module: it only works if sys.path[0] is this folder)."""
import torch
from torch.utils.data import TensorDataset


def quadrant_images(n: int, seed: int = 0) -> TensorDataset:
    """3x12x12 noise images whose class (0-3) is a bright quadrant."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    x = torch.randn(n, 3, 12, 12, generator=gen) * 0.5
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, r * 6:(r + 1) * 6, q * 6:(q + 1) * 6] += 1.5
    return TensorDataset(x, y)
