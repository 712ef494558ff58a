"""The recorder: hooks in the training process that write a run directory."""
from diagnose.recorder.recorder import Recorder, RecorderOptions, RunDirExistsError

__all__ = ["Recorder", "RecorderOptions", "RunDirExistsError"]
