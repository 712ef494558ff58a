"""Robust statistics shared by the resource rules (no rule lives here)."""
from __future__ import annotations

import numpy as np

_MAD_TO_SIGMA = 1.4826
_MAX_POINTS = 128


def theil_sen_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Median of the pairwise slopes: a trend that a few outliers or one jump cannot
    dominate. Long series are thinned to 128 evenly spaced points (8k pairs) first."""
    if len(x) < 2:
        return 0.0
    if len(x) > _MAX_POINTS:
        keep = np.linspace(0, len(x) - 1, _MAX_POINTS).round().astype(int)
        x, y = x[keep], y[keep]
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    ok = dx != 0
    return float(np.median((y[j] - y[i])[ok] / dx[ok])) if ok.any() else 0.0


def robust_sigma(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation."""
    if len(values) == 0:
        return 0.0
    return float(_MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', with a sign only when negative."""
    sign, n = ("-" if n < 0 else ""), abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} TiB"  # pragma: no cover - unreachable


def fmt_seconds(s: float) -> str:
    """0.0123 -> '12.3 ms', 2.5 -> '2.50 s'."""
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"
