"""Run one script twice in this process — bare (`runpy`, as `python SCRIPT` would) and
under the zero-code recorder — and report whether the results are bit-identical.

    python tests/zerocode/_twin.py SCRIPT RUN_DIR

Compares every nn.Module's state_dict and every optimizer's state found in the script's
globals, the global RNG state after the run, and stdout. Prints one JSON line.
"""
from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import torch

from diagnose.recorder import RecorderOptions
from diagnose.zerocode import run_script


def _snapshot(namespace: dict) -> dict:
    out = {}
    for name, value in namespace.items():
        if isinstance(value, torch.nn.Module):
            for key, tensor in value.state_dict().items():
                out[f"{name}.{key}"] = tensor.detach().clone()
        elif isinstance(value, torch.optim.Optimizer):
            for i, state in enumerate(value.state.values()):
                for key, tensor in state.items():
                    if isinstance(tensor, torch.Tensor):
                        out[f"{name}.state{i}.{key}"] = tensor.detach().clone()
    out["<rng>"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["<cuda rng>"] = torch.cuda.get_rng_state()
    return out


def _run(script: Path, recorded: Path | None) -> tuple[dict, str]:
    captured: dict = {}
    original = runpy.run_path

    def run_path(*args, **kwargs):
        namespace = original(*args, **kwargs)
        captured.update(namespace)
        return namespace

    runpy.run_path = run_path
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            if recorded is None:
                saved = sys.argv[:]
                sys.argv = [str(script)]
                sys.path.insert(0, str(script.parent))
                try:
                    runpy.run_path(str(script), run_name="__main__")
                finally:
                    sys.argv = saved
                    sys.path.pop(0)
            else:
                assert run_script(script, [], recorded, options=RecorderOptions()) == 0
    finally:
        runpy.run_path = original
    return _snapshot(captured), stdout.getvalue()


def main() -> None:
    script, run_dir = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    bare, bare_out = _run(script, None)
    watched, watched_out = _run(script, run_dir)
    differ = sorted(k for k in bare.keys() | watched.keys()
                    if k not in bare or k not in watched or not torch.equal(bare[k], watched[k]))
    print(json.dumps({"tensors": len(bare), "differ": differ,
                      "same_stdout": bare_out == watched_out}))


if __name__ == "__main__":
    main()
