"""The reference training loop of diagnose: a configurable AMP training loop on embedded
tasks, instrumented through `diagnose.Monitor`, with fault injections.

    from reference_loop.config import TrainConfig
    from reference_loop.train import train, build

    result = train(TrainConfig(), "runs/ref")

(`train` and `build` are deliberately not re-exported here: `reference_loop.train` stays
the module, so `reference_loop.train.build` and `import reference_loop.train as t` work.)
"""

from reference_loop.config import TrainConfig
from reference_loop.injections import INJECTIONS

__all__ = ["INJECTIONS", "TrainConfig"]
