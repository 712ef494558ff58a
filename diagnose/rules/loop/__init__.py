"""Loop-structure rules: call order and modes (zero_grad, backward, step, eval, schedulers)."""
