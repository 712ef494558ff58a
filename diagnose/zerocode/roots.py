"""Which modules are "the model(s)": decided once, from what the script called.

The global forward hook sees every module call; the zero-code mode keeps the outermost
ones (called while no other module's forward runs). At the first optimizer step it
resolves which of those are models being trained:

1. modules that own a parameter some optimizer holds (the trained models), then
2. modules with a parameter that has a gradient but is in no optimizer (trained by
   mistake: `params-not-updated`);
3. if no optimizer exists at all (a script that never trains), modules with parameters,
   so its evaluation passes are still recorded;

keeping only those that are not a submodule of another one. A loss module
(`nn.CrossEntropyLoss()`) owns no parameters and is never a model; a frozen teacher or an
EMA copy owns none of the optimizer's parameters and gets no gradients, so it is not one
either.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch


def owns_any(module: torch.nn.Module, param_ids: set[int]) -> bool:
    """Whether `module` (or a submodule) holds a parameter whose id is in `param_ids`."""
    return any(id(p) in param_ids for p in module.parameters())


def has_unoptimized_grads(module: torch.nn.Module, param_ids: set[int]) -> bool:
    """Whether a parameter of `module` got a gradient but is in no optimizer."""
    return any(p.grad is not None and id(p) not in param_ids for p in module.parameters())


def outermost(modules: Sequence[torch.nn.Module]) -> list[torch.nn.Module]:
    """`modules` without those that are a submodule of another one (order kept)."""
    inner: set[int] = set()
    for module in modules:
        inner.update(id(sub) for sub in module.modules() if sub is not module)
    return [m for m in modules if id(m) not in inner]


def resolve_roots(called: Iterable[torch.nn.Module], optimizer_param_ids: set[int], *,
                  have_optimizers: bool) -> list[torch.nn.Module]:
    """The models among `called` (top-level modules in first-call order), trained first."""
    unique: list[torch.nn.Module] = []
    for module in called:
        if all(module is not m for m in unique):
            unique.append(module)
    trained = [m for m in unique if owns_any(m, optimizer_param_ids)]
    stray = [m for m in unique if m not in trained
             and has_unoptimized_grads(m, optimizer_param_ids)]
    if not have_optimizers and not trained and not stray:
        stray = [m for m in unique if next(m.parameters(), None) is not None]
    roots = outermost(trained + stray)
    return [m for m in roots if any(m is t for t in trained)] + \
        [m for m in roots if all(m is not t for t in trained)]


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module a wrapper stands for: `torch.compile`'s OptimizedModule (`_orig_mod`),
    DistributedDataParallel / DataParallel (`module`). Its mode (train/eval) is what
    dropout and batch norm use, and its parameter names are the user's."""
    for _ in range(4):
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, torch.nn.Module):
            module = inner
            continue
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel,
                               torch.nn.DataParallel)):
            module = module.module
            continue
        break
    return module
