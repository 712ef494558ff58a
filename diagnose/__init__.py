"""diagnose: tells you why your PyTorch training run is wrong, slow or wasteful.

Public API: `Monitor` (instrument a loop), `read_run` (load a run directory),
`Finding`, `Severity` and `__version__`.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy imports keep `import diagnose` cheap (the pytest plugin imports it).
    if name == "Monitor":
        from diagnose.monitor import Monitor
        return Monitor
    if name == "read_run":
        from diagnose.rundir.reader import read_run
        return read_run
    if name in ("Finding", "Severity"):
        from diagnose.rules import _base
        return getattr(_base, name)
    raise AttributeError(f"module 'diagnose' has no attribute {name!r}")


__all__ = ["Monitor", "read_run", "Finding", "Severity", "__version__"]
