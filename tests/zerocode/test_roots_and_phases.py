"""The pure parts: which modules are models, where evaluation phases are, class patches."""
from __future__ import annotations

import torch
import torch.nn as nn

from diagnose.zerocode.classpatch import ClassPatches, is_wrapper
from diagnose.zerocode.phases import insert_phases
from diagnose.zerocode.roots import outermost, resolve_roots, unwrap


def _ids(modules):
    return {id(p) for m in modules for p in m.parameters()}


def test_roots_are_outermost_owners_then_modules_with_stray_gradients():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    loss = nn.MSELoss()
    teacher = nn.Linear(2, 2).requires_grad_(False)
    stray = nn.Linear(2, 1)
    stray(torch.randn(1, 2)).sum().backward()
    called = [teacher, stray, model[0], model, loss, model]
    roots = resolve_roots(called, _ids([model]), have_optimizers=True)
    assert roots == [model, stray]  # trained first, submodule and loss/teacher dropped


def test_without_any_optimizer_modules_with_parameters_are_models():
    model, loss = nn.Linear(2, 2), nn.CrossEntropyLoss()
    assert resolve_roots([loss, model], set(), have_optimizers=True) == []
    assert resolve_roots([loss, model], set(), have_optimizers=False) == [model]


def test_outermost_and_unwrap():
    inner = nn.Linear(2, 2)
    outer = nn.Sequential(inner)
    assert outermost([inner, outer]) == [outer]
    compiled = torch.compile(outer, backend="eager")
    assert unwrap(compiled) is outer and unwrap(outer) is outer


def _tokens(*names):
    return [[n.split("[")[0], n.split("[")[1][:-1] if "[" in n else None] for n in names]


def _names(tokens):
    return [n if not f else f"{n}[{f}]" for n, f in tokens]


def test_phase_val_starts_at_eval_call_and_train_at_next_training_call():
    tokens = _tokens("opt0.zero_grad", "model0.forward[TGB]", "backward", "opt0.step",
                     "sched0.step", "model0.eval", "model0.forward[EN]", "model0.forward[EN]",
                     "sched1.step", "model0.train", "opt0.zero_grad")
    out, phase = insert_phases(tokens, "train")
    assert _names(out) == ["opt0.zero_grad", "model0.forward[TGB]", "backward", "opt0.step",
                           "sched0.step", "phase:val", "model0.eval", "model0.forward[EN]",
                           "model0.forward[EN]", "sched1.step", "phase:train", "model0.train",
                           "opt0.zero_grad"]
    assert phase == "train"


def test_phase_carries_over_calls_records_and_covers_buggy_evaluations():
    first, phase = insert_phases(_tokens("opt0.step", "model0.forward[TN]"), "train")
    assert _names(first) == ["opt0.step", "phase:val", "model0.forward[TN]"] and phase == "val"
    second, phase = insert_phases(_tokens("model0.forward[TG]", "opt0.zero_grad",
                                          "model0.forward[EGB]"), phase)
    assert _names(second) == ["model0.forward[TG]", "phase:train", "opt0.zero_grad",
                              "model0.forward[EGB]"]


def test_class_patches_wrap_once_and_undo_exactly():
    class Base:
        def hello(self):
            return "base"

    class Child(Base):
        pass

    calls = []

    def make(original):
        def hello(self):
            calls.append(type(self).__name__)
            return original(self)
        return hello

    patches = ClassPatches()
    assert patches.wrap_defining(Child, "hello", make)      # wraps Base.hello
    assert not patches.wrap(Base, "hello", make)           # already wrapped
    assert Child().hello() == "base" and calls == ["Child"] and is_wrapper(Base.hello)
    patches.undo()
    assert not is_wrapper(Base.hello) and "hello" not in vars(Child)


def test_a_forward_whose_loss_was_cut_from_the_graph_stays_in_training():
    """`loss.detach().requires_grad_()`: the backward right after the forward reached
    nothing, so the forward has no B, but it is the step's training forward (field test
    round 4); a validation with autograd on is followed by a training forward first."""
    cut, phase = insert_phases(_tokens("batch", "model0.forward[TG]", "opt0.zero_grad", "backward",
                                       "opt0.step"), "train")
    assert "phase:val" not in _names(cut) and phase == "train"
    validation, phase = insert_phases(_tokens("opt0.step", "model0.eval", "model0.forward[EG]", "model0.train",
                                              "opt0.zero_grad", "model0.forward[TGB]", "backward"), "train")
    assert _names(validation)[:3] == ["opt0.step", "phase:val", "model0.eval"] and phase == "train"
    no_grad, _ = insert_phases(_tokens("model0.forward[TN]", "backward"), "train")
    assert _names(no_grad)[0] == "phase:val"  # under no_grad it cannot be the loss's forward


def test_a_teacher_forward_with_grad_beside_a_trained_student_stays_an_evaluation():
    tokens, _ = insert_phases(_tokens("opt1.zero_grad", "model1.forward[TGB]", "model0.forward[EG]", "backward",
                                      "opt1.step"), "train")
    assert _names(tokens)[:4] == ["opt1.zero_grad", "model1.forward[TGB]", "phase:val", "model0.forward[EG]"]
