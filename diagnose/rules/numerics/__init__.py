"""Numerics rules: non-finite values, exploding or vanishing gradients, loss curves."""
