"""Zero code change: record a user's unchanged PyTorch script (`diagnose run train.py`).

    from diagnose.zerocode import run_script
    code = run_script(Path("train.py"), ["--lr", "3e-4"], Path("runs/x"),
                      options=RecorderOptions())

or `python -m diagnose.zerocode --out runs/x train.py --lr 3e-4`. The recorder is
installed before the script runs and removed after it; the run directory is the same
as the Monitor's, so `diagnose report` works unchanged. How it finds the models,
optimizers, schedulers and scalers, and what it cannot see, is in docs/zero-code.md.

Modules: `runner` (run the script like Python), `session` (discovered objects, handlers),
`modules` / `objects` / `loaders` / `capture` (the hooks and class-level wrappers),
`roots` (which modules are the models), `phases` (inferred evaluation phases),
`recording` (the recorder with late models and pending calls), `classpatch` (undo list).
"""
from diagnose.zerocode.runner import run_script

__all__ = ["run_script"]
