"""The pytest plugin, tested by running pytest in pytest (pytester, in-process where possible).

Inner test files import `loops` (tests/plugin/loops.py, copied next to them): healthy
loops written several ways must pass every assertion; each seeded bug must fail the
assertion made for it, with the rule's name, the step, the recorded calls and the fix.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest_plugins = ["pytester"]

LOOPS = Path(__file__).with_name("loops.py").read_text()

QUIET = ("-p", "no:cacheprovider", "-W", "ignore::UserWarning",
         # its gc.collect() at exit, five times over torch's heap, costs ~0.4 s per inner run
         "-p", "no:unraisableexception")

HEADER = """
import pytest
import torch
import torch.nn.functional as F
from loops import build, data, evaluate, net, train
"""


@pytest.fixture(scope="module")
def _imported(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Record, read and check one trace of each kind here, outside the inner runs.

    An in-process pytester run removes the modules first imported during it when it ends;
    pandas or pyarrow modules imported lazily inside one run would come back as new class
    objects in the next, which breaks isinstance checks in the modules that stayed.
    """
    from diagnose.looptrace import loop_trace

    with torch.autocast("cpu", dtype=torch.bfloat16):
        pass
    for objects in ((True,), ()):
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with loop_trace(*((model, opt) if objects else ()), run_dir=tmp_path_factory.mktemp("warm")) as trace:
            for _ in range(2):
                opt.zero_grad()
                model(torch.ones(1, 2)).sum().backward()
                opt.step()
        trace.assert_step_order()
        trace.assert_no_findings()


@pytest.fixture
def inner(pytester: pytest.Pytester, _imported: None, one_torch_thread: None):
    """Run an inner test file (HEADER + `body`) in-process; returns the RunResult."""
    pytester.makepyfile(loops=LOOPS)

    def run(body: str, *args: str) -> pytest.RunResult:
        pytester.makepyfile(test_inner=HEADER + body)
        return pytester.runpytest_inprocess(*QUIET, *args)

    return run


# ---- healthy loops pass ----------------------------------------------------------------------

HEALTHY = """
def check_all(trace, scheduler=True):
    trace.assert_step_order()
    trace.assert_zero_grad_called()
    trace.assert_no_zero_grad_before_step()
    trace.assert_scheduler_after_optimizer()
    if scheduler:
        trace.assert_scheduler_stepped()
        trace.assert_scheduler_frequency()
    trace.assert_no_zero_lr_steps()
    trace.assert_clip_after_unscale()
    trace.assert_eval_mode_in_eval()
    trace.assert_no_grad_in_eval()
    trace.assert_train_mode_restored()
    trace.assert_params_updated()
    trace.assert_no_findings()


def test_plain(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, scheduler=sched) as trace:
        train(model, opt, sched)
        evaluate(model)
    check_all(trace)
    trace.assert_order("zero_grad", "backward", "clip", "optimizer.step", "scheduler.step")
    trace.assert_called("optimizer.step", times=3)
    trace.assert_called("scheduler.step", times=3)
    assert list(trace.steps.index) == [0, 1, 2]
    assert trace.sequence(0) == ["model0.train", "opt0.zero_grad", "model0.forward[TGB]", "backward",
                                 "clip_grad_norm_", "opt0.step", "sched0.step"]


def test_zero_grad_at_end_scheduler_per_epoch(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, sched) as trace:
        for epoch in range(2):
            train(model, opt, sched, steps=2, zero_grad="end", sched_step="never", batches=data()[epoch * 2:])
            evaluate(model)
            sched.step()
    check_all(trace)
    trace.assert_order("backward", "optimizer.step", "zero_grad")
    trace.assert_called("scheduler.step", times=2)


def test_accumulation_bf16(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, scheduler=sched) as trace:
        train(model, opt, sched, accum=2, dtype=torch.bfloat16)
        evaluate(model)
    check_all(trace)
    trace.assert_called("backward", times=6)
    trace.assert_called("optimizer.step", times=3)
    trace.assert_order("zero_grad", "backward", "clip", "optimizer.step", "scheduler.step")


def test_fp16_grad_scaler_skips_steps(loop_trace):
    model, opt, sched, scaler = build(scaler="fp16")
    with loop_trace(model, opt, scheduler=sched, scaler=scaler) as trace:
        train(model, opt, sched, scaler, steps=4)
        evaluate(model)
    assert trace.skipped_steps == [0, 1]  # fp16 on CPU really overflows at this scale
    check_all(trace)
    trace.assert_order("zero_grad", "backward", "scaler.unscale_", "clip", "optimizer.step", "scaler.update",
                       "scheduler.step")
    trace.assert_order("scaler.step", "opt0.step", "scaler.update")  # opt0.step excused when skipped
    trace.assert_called("optimizer.step", times=4)
    trace.assert_called("opt0.step", times=2)


def test_disabled_scaler_clip_without_unscale(loop_trace):
    model, opt, sched, scaler = build(scaler="disabled")
    with loop_trace(model, opt, scheduler=sched, scaler=scaler) as trace:
        train(model, opt, sched, scaler, unscale=False, dtype=torch.bfloat16)
        evaluate(model)
    check_all(trace)


def test_two_optimizers(loop_trace):
    model = net()
    body, head = model[:4], model[4]
    opt_body = torch.optim.Adam(body.parameters(), lr=1e-3)
    opt_head = torch.optim.SGD(head.parameters(), lr=0.05)
    with loop_trace(model, opt_body, opt_head) as trace:
        for x, y in data()[:3]:
            opt_body.zero_grad()
            opt_head.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt_body.step()
            opt_head.step()
        evaluate(model)
    check_all(trace, scheduler=False)
    trace.assert_order("zero_grad", "backward", "optimizer.step")
    trace.assert_called("opt1.step", times=3)


def test_plateau_scheduler_on_val_loss(loop_trace):
    model, opt, sched, _ = build(scheduler="plateau")
    with loop_trace(model, opt, scheduler=sched) as trace:
        for epoch in range(2):
            train(model, opt, sched, steps=2, batches=data()[epoch * 2:])
            sched.step(evaluate(model))
    check_all(trace)


def test_one_cycle_per_iteration(loop_trace):
    model = net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=6)
    with loop_trace(model, opt, sched) as trace:
        for epoch in range(2):
            train(model, opt, sched, batches=data()[epoch * 3:])
            evaluate(model)
    check_all(trace)


def test_marked_phase(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, scheduler=sched) as trace:
        train(model, opt, sched)
        with trace.phase("val"):
            evaluate(model)
    check_all(trace)
    assert set(trace.calls["phase"]) == {"train", "val"}


def test_nothing_passed_in_discovers(loop_trace):
    with loop_trace() as trace:
        model, opt, sched, scaler = build(scaler="fp16")
        train(model, opt, sched, scaler, steps=4)
        evaluate(model)
    check_all(trace)
    assert trace.legend == "model0 = Sequential, opt0 = SGD, sched0 = StepLR, scaler0 = GradScaler"
"""


def test_healthy_loops_pass_every_assertion(inner) -> None:
    result = inner(HEALTHY)
    result.assert_outcomes(passed=10)


# ---- seeded bugs fail, with the rule, the step, the calls and the fix ------------------------

_TRAIN_EVAL = """
def test_fault(loop_trace):
    model, opt, sched, scaler = build({build})
    with loop_trace(model, opt, scheduler=sched, scaler=scaler) as trace:
        {block}
    trace.{assertion}()
"""

FAULTS = {
    # name: (build args, block, assertion, rule, step shown)
    "no_zero_grad": ("", "train(model, opt, sched, zero_grad='never')", "assert_zero_grad_called",
                     "missing-zero-grad", 1),
    "zero_grad_before_step": ("", "train(model, opt, sched, zero_grad='before_step')", "assert_step_order",
                              "zero-grad-before-step", 0),
    "scheduler_before_step": ("", "train(model, opt, sched, sched_step='before')",
                              "assert_scheduler_after_optimizer", "scheduler-before-optimizer", 0),
    "scheduler_never_stepped": ("", "train(model, opt, sched, sched_step='never')", "assert_scheduler_stepped",
                                "scheduler-never-stepped", 2),
    "clip_before_unscale": ("scaler='fp16'", "train(model, opt, sched, scaler, steps=4, unscale=False)",
                            "assert_clip_after_unscale", "clip-before-unscale", 0),
    "clip_after_step": ("", "train(model, opt, sched, clip_at='after_step')", "assert_step_order",
                        "clip-after-step", 0),
    "eval_in_train_mode": ("", "train(model, opt, sched); evaluate(model, eval_mode=False)",
                           "assert_eval_mode_in_eval", "eval-without-eval-mode", 2),
    "eval_with_grad": ("", "train(model, opt, sched); evaluate(model, no_grad=False)",
                       "assert_eval_mode_in_eval", "eval-with-grad", 2),
    "eval_with_grad_no_grad_assertion": ("", "train(model, opt, sched); evaluate(model, no_grad=False)",
                                         "assert_no_grad_in_eval", "eval-with-grad", 2),
    "train_mode_not_restored_then_trained": (
        "", "train(model, opt, sched, steps=2); evaluate(model, restore=False); "
            "train(model, opt, sched, steps=2, set_train=False)",
        "assert_train_mode_restored", "train-mode-not-restored", 2),
    "train_mode_not_restored_at_end": ("", "train(model, opt, sched); evaluate(model, restore=False)",
                                       "assert_train_mode_restored", "train-mode-not-restored", 2),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_seeded_bug_fails_with_rule_step_calls_and_fix(inner, name: str) -> None:
    build_args, block, assertion, rule, step = FAULTS[name]
    result = inner(_TRAIN_EVAL.format(build=build_args, block=block, assertion=assertion))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f">*trace.{assertion}()",  # the failure points at the user's line
        f"E*loop_trace.{assertion}(*): * problem* in the recorded loop",
        f"E*[[]{rule}[]] *",
        "E*expected *",
        f"E*step {step} *",
        "E*fix *",
        f"E*rule *{rule} (*",
        "E*recorded in *",
    ])
    assert "looptrace/assertions.py" not in result.stdout.str()  # helpers hidden from the traceback


def test_param_left_out_of_optimizer(inner) -> None:
    result = inner("""
def test_fault(loop_trace):
    model = net()
    opt = torch.optim.SGD(model[4].parameters(), lr=0.05)   # the first layers are left out
    with loop_trace(model, opt) as trace:
        train(model, opt)
    trace.assert_params_updated()
""")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E*[[]params-not-updated[]]*", "E*fix *", "E*rule *params-not-updated (*"])


def test_schedule_laid_out_wrong(inner) -> None:
    result = inner("""
def run(loop_trace, make_scheduler, steps=3):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = make_scheduler(opt)
    with loop_trace(model, opt, sched) as trace:
        for epoch in range(2):
            train(model, opt, steps=steps, batches=data()[epoch * steps:])
            sched.step()                               # once per epoch
    return trace


def test_one_cycle_stepped_per_epoch(loop_trace):
    trace = run(loop_trace, lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=6))
    trace.assert_scheduler_frequency()


def test_warmup_from_zero_stepped_per_epoch(loop_trace):
    trace = run(loop_trace, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 3)), steps=4)
    trace.assert_no_zero_lr_steps()
""")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "E*[[]scheduler-step-frequency[]] sched0 (OneCycleLR, total_steps=6) was stepped 2 times*",
        "E*rule*scheduler-step-frequency (*"])
    result.stdout.fnmatch_lines(["E*[[]zero-lr-steps[]] 3 optimizer steps*LR exactly 0*", "E*rule*zero-lr-steps (*"])


def test_every_problem_is_listed_once(inner) -> None:
    result = inner(_TRAIN_EVAL.format(
        build="", assertion="assert_step_order",
        block="train(model, opt, sched, zero_grad='before_step', sched_step='before', clip_at='after_step')"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E*assert_step_order(): 3 problems*"])
    # the failure section only: with CI set, pytest repeats the whole message in the short summary
    text = result.stdout.str().split("short test summary info")[0]
    for rule in ("zero-grad-before-step", "scheduler-before-optimizer", "clip-after-step"):
        assert text.count(f"[{rule}]") == 1


# ---- nothing to check fails, misuse is an error ---------------------------------------------


def test_nothing_recorded_fails_rather_than_passes(inner) -> None:
    result = inner("""
def test_no_step(loop_trace):
    model, opt, sched, _ = build()
    other = torch.optim.SGD(net().parameters(), lr=0.1)   # not the optimizer the loop steps
    with loop_trace(model, other) as trace:
        train(model, opt, sched)
    trace.assert_step_order()


def test_no_evaluation(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, sched) as trace:
        train(model, opt, sched)
    trace.assert_eval_mode_in_eval()
""")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "E*assert_step_order(): no optimizer step was recorded in the block, so there is nothing to check",
        "E*traced*model0 = Sequential, opt0 = SGD",
        "E*hint*pass the optimizer that the loop steps*",
    ])
    result.stdout.fnmatch_lines([
        "E*assert_eval_mode_in_eval(): no evaluation forward pass was recorded in the block*",
        "E*trace.phase(*",
    ])


def test_assert_order_and_called_failures(inner) -> None:
    result = inner("""
def test_order(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, sched) as trace:
        train(model, opt, sched, sched_step='before')
    trace.assert_order("zero_grad", "backward", "optimizer.step", "scheduler.step")


def test_called(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, sched) as trace:
        train(model, opt, sched, steps=2)
    trace.assert_called("optimizer.step", times=3)


def test_unknown_call(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, sched) as trace:
        train(model, opt, sched, steps=1)
    trace.assert_called("step")
""")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "E*assert_order(*): sched0.step at step 0 came after backward, where optimizer.step was expected",
        "E*expected*zero_grad → backward → optimizer.step → scheduler.step (each may repeat)*",
        "E*step 0 *model0.train, opt0.zero_grad, model0.forward[[]TGB[]], backward, clip_grad_norm_,",
        "E*sched0.step, opt0.step",
        "E*call*sched0.step (expected optimizer.step or another backward)",
    ])
    result.stdout.fnmatch_lines([
        "E*assert_called('optimizer.step', times=3): optimizer.step was called 2 times, expected 3 times",
        "E*recorded*2 calls: step 0: 1, step 1: 1",
    ])
    result.stdout.fnmatch_lines(["E*ValueError: 'step' is ambiguous: write 'optimizer.step'*"])


def test_reading_inside_the_block_is_an_error(inner) -> None:
    result = inner("""
def test_early(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt) as trace:
        train(model, opt, steps=1)
        trace.assert_step_order()
""")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E*TraceError: the trace is still recording: call its assertions after the `with` block"])


# ---- the plugin leaves nothing behind ----------------------------------------------------------

UNDISTURBED = """
import diagnose.recorder.hooks as hooks
import torch.nn.modules.module as module_mod

ORIGINALS = (torch.Tensor.backward, torch.nn.utils.clip_grad_norm_, torch.optim.Optimizer.zero_grad,
             torch.nn.Module.train, torch.optim.lr_scheduler.LRScheduler.step, torch.amp.GradScaler.step)
KEPT = {}


def test_a_trace(loop_trace):
    model, opt, sched, scaler = build(scaler="fp16")
    KEPT.update(model=model, opt=opt, sched=sched, scaler=scaler)
    with loop_trace(model, opt, scheduler=sched, scaler=scaler) as trace:
        train(model, opt, sched, scaler)
    trace.assert_step_order()


def test_b_block_raises(loop_trace):
    model, opt, sched, _ = build()
    with pytest.raises(RuntimeError, match="boom"):
        with loop_trace(model, opt) as trace:
            train(model, opt, steps=1)
            raise RuntimeError("boom")
    assert trace.run.first.meta["status"] == "crashed"
    trace.assert_step_order()


def test_c_block_never_ended(loop_trace):
    model, opt, sched, _ = build()
    loop_trace(model, opt).__enter__()   # the fixture's teardown must stop it
    train(model, opt, steps=1)


def test_d_zero_code_trace(loop_trace):
    with loop_trace() as trace:
        model, opt, sched, _ = build()
        train(model, opt, sched, steps=2)
    trace.assert_step_order()


def test_e_nothing_left_behind():
    assert (torch.Tensor.backward, torch.nn.utils.clip_grad_norm_, torch.optim.Optimizer.zero_grad,
            torch.nn.Module.train, torch.optim.lr_scheduler.LRScheduler.step,
            torch.amp.GradScaler.step) == ORIGINALS
    assert not hooks._listeners
    assert not module_mod._global_forward_hooks and not module_mod._global_forward_pre_hooks
    model, opt, sched, scaler = KEPT["model"], KEPT["opt"], KEPT["sched"], KEPT["scaler"]
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    for obj, names in ((model, ("train", "zero_grad")), (opt, ("zero_grad",)), (sched, ("step",)),
                       (scaler, ("scale", "unscale_", "step", "update"))):
        assert not set(names) & set(vars(obj)), obj
    train(model, opt, sched, scaler, steps=1)   # plain training still works


def test_f_unrelated_test():
    x = torch.ones(2, requires_grad=True)
    (x * 3).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]
"""


def test_nothing_left_installed_after_the_fixture(inner) -> None:
    result = inner(UNDISTURBED)
    result.assert_outcomes(passed=6)
    assert not getattr(torch.Tensor.backward, "__diagnose_wrapped__", False)


def test_works_under_xdist(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pytester.makepyfile(loops=LOOPS)
    pytester.makepyfile(test_inner=HEADER + """
@pytest.mark.parametrize("steps", [2, 3])
def test_good(loop_trace, steps):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, scheduler=sched) as trace:
        train(model, opt, sched, steps=steps)
        evaluate(model)
    trace.assert_step_order()
    trace.assert_eval_mode_in_eval()
    trace.assert_no_findings()


def test_bad(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, scheduler=sched) as trace:
        train(model, opt, sched, sched_step="before")
    trace.assert_step_order()
""")
    result = pytester.runpytest_subprocess("-n", "2", *QUIET, "-p", "no:hypothesispytest", "-p", "no:benchmark")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*[[]gw*[]]*", "E*[[]scheduler-before-optimizer[]]*"])


# ---- options and cost ------------------------------------------------------------------------


def test_loop_trace_dir_keeps_the_recordings(inner, pytester: pytest.Pytester) -> None:
    from diagnose.rundir.reader import read_run

    keep = pytester.path / "kept"
    result = inner("""
def test_kept(loop_trace):
    model, opt, sched, _ = build()
    with loop_trace(model, opt, scheduler=sched) as trace:
        train(model, opt, sched)
    trace.assert_step_order()
""", f"--loop-trace-dir={keep}")
    result.assert_outcomes(passed=1)
    (run_dir,) = keep.glob("*/trace0")
    assert "test_kept" in run_dir.parent.name
    assert len(read_run(run_dir).first.steps) == 3


def test_option_in_its_own_help_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--help")
    result.stdout.fnmatch_lines(["diagnose: training-loop checks (loop_trace fixture):", "*--loop-trace-dir=DIR*"])


def test_plugin_import_does_not_load_torch() -> None:
    code = "import sys, diagnose.pytest_plugin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# ---- the API underneath, without pytest-in-pytest --------------------------------------------


@pytest.mark.parametrize(("text", "token", "hit"), [
    ("zero_grad", "model0.zero_grad", True),
    ("optimizer.zero_grad", "model0.zero_grad", False),
    ("optimizer.step", "scaler0.step", True),
    ("optimizer.step", "sched0.step", False),
    ("opt1.step", "opt0.step", False),
    ("clip", "clip_grad_value_", True),
    ("scheduler.step", "sched1.step", True),
    ("model.eval", "model0.eval", True),
    ("model0.forward[EN]", "model0.forward[EN]", True),
    ("model0.forward[EN]", "model0.forward[TN]", False),
])
def test_call_patterns(text: str, token: str, hit: bool) -> None:
    import numpy as np

    from diagnose.looptrace import patterns
    from diagnose.rundir._calls import parse_token

    parsed = parse_token(token)
    found = patterns.parse(text).matches(np.array([parsed.obj]), np.array([parsed.method]), np.array([token]))
    assert bool(found[0]) is hit


@pytest.mark.parametrize(("text", "message"), [
    ("step", "ambiguous"), ("optimiser.step", "unknown object"), ("fwd", "unknown call")])
def test_bad_call_patterns(text: str, message: str) -> None:
    from diagnose.looptrace import patterns

    with pytest.raises(ValueError, match=message):
        patterns.parse(text)


def test_objects_sorted_by_type(tmp_path: Path) -> None:
    from diagnose.looptrace import LoopTrace

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    trace = LoopTrace(tmp_path, [opt, model], sched, scaler=None)
    assert trace._objects.models == [model] and trace._objects.schedulers == [sched]
    with pytest.raises(TypeError, match="cannot trace a str"):
        LoopTrace(tmp_path, model, "opt")
    with pytest.raises(TypeError, match="unexpected keyword argument 'optimiser'"):
        LoopTrace(tmp_path, optimiser=opt)
