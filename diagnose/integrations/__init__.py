"""Bridges to the tools people already train with (docs/integrations.md).

- `tensorboard`: read a TensorBoard log directory (SummaryWriter, Lightning's
  TensorBoardLogger, the Hugging Face Trainer) into the run tables the rules read, so
  `diagnose report LOGDIR` works on runs that were never recorded by diagnose;
  `tb_tags` decides which tag is which series.
- `export`: write a diagnose run directory's series as TensorBoard scalars
  (`diagnose export RUN_DIR --tensorboard OUT`).
- `lightning`: a Lightning `Callback` that records a `Trainer` into a run directory.

Each needs an optional package (tensorboard, lightning); importing this package needs none.
"""
