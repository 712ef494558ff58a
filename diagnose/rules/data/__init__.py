"""Data, model and state rules: bad inputs, loss/shape mistakes, incomplete checkpoints."""
