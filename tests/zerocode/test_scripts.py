"""Every plain script in tests/scripts, recorded unchanged by `python -m diagnose.zerocode`.

One test per script (each script is recorded once, in its own process): the exit code
and status, then what the recorder must have seen in that script — steps, call order,
evaluation forward flags, inferred phases, losses, scheduler and scaler calls.
"""
from __future__ import annotations

import math
import re

import pyarrow.ipc as ipc
import pytest

from diagnose.rundir.reader import read_run
from tests.scripts import SCRIPTS
from tests.zerocode._helpers import Run, record

TRAIN_STEP = ["opt0.zero_grad", "model0.forward[TGB]", "backward", "opt0.step"]


def _printed(run: Run, pattern: str) -> list[float]:
    return [float(v) for v in re.findall(pattern, run.stdout, re.MULTILINE)]


def _loss_series(run: Run) -> list[float]:
    return [s["loss"] for s in run.steps]


def check_healthy_mlp_onecycle(run: Run) -> None:
    assert len(run.steps) == 36
    printed = _printed(run, r"^loss (\S+)$")
    assert len(printed) == 36
    assert _loss_series(run) == pytest.approx(printed, rel=1e-6)  # the tensor backward() got
    by_step = run.calls_by_step()
    assert by_step[0] == ["model0.train", "opt0.zero_grad", "model0.forward[TGB]", "backward",
                          "clip_grad_norm_", "opt0.step", "sched0.step"]
    assert by_step[11][-6:] == ["phase:val", "model0.eval", "model0.forward[EN]",
                                "model0.forward[EN]", "phase:train", "model0.train"]
    lrs = [s["lr"][0] for s in run.steps]
    assert max(lrs) > 10 * lrs[0] and lrs[-1] < lrs[0]  # the one-cycle shape
    assert all(s["clip_max"] == 1.0 and s["samples"] == 32 for s in run.steps)
    assert [p["name"] for p in run.params] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert all(p["optimizer"] == 0 for p in run.params)
    assert not run.kind("warning") and not run.kind("recorder_error")


def check_healthy_cnn_batchnorm_workers(run: Run) -> None:
    assert len(run.steps) == 16
    assert [s["epoch"] for s in run.steps] == [0] * 8 + [1] * 8  # inferred from the loader
    assert sum(s["data_wait_s"] for s in run.steps) > 0  # worker processes, timed
    by_step = run.calls_by_step()
    assert by_step[7][-6:] == ["sched0.step", "phase:val", "model0.eval",
                               "model0.forward[EI]",  # inference_mode evaluation
                               "phase:train", "model0.train"]
    assert run.calls.count("sched0.step") == 2
    assert run.objects["models"] == [{"index": 0, "class": "SmallCNN"}]
    assert run.params[0]["module_type"] == "Conv2d"


def check_healthy_gru_plateau(run: Run) -> None:
    assert len(run.steps) == 24
    metrics = [m["metrics"]["scheduler_metric"] for m in run.kind("metrics")]
    assert metrics == pytest.approx(_printed(run, r"val_loss ([0-9.e-]+)"))
    assert run.calls_by_step()[7][-6:] == ["phase:val", "model0.eval", "model0.forward[EN]",
                                           "sched0.step", "phase:train", "model0.train"]
    assert run.calls.count("model0.zero_grad") == 24
    assert run.objects["schedulers"][0]["class"] == "ReduceLROnPlateau"


def check_healthy_transformer_bf16(run: Run) -> None:
    assert len(run.steps) == 16
    assert all(len(s["lr"]) == 2 for s in run.steps)  # two parameter groups
    assert all(s["samples"] == 16 and s["tokens"] == 256 for s in run.steps)
    assert run.calls_by_step()[3] == ["model0.forward[TGB]", "opt0.zero_grad", "backward",
                                      "opt0.step", "sched0.step"]
    groups = {p["name"]: p["group"] for p in run.params}
    assert groups["pos"] == 0 and groups["norm.bias"] == 1


def check_healthy_fp16_scaler_accumulation(run: Run) -> None:
    assert len(run.steps) == 8
    assert all(s["micro_batches"] == 4 and s["samples"] == 64 for s in run.steps)
    assert run.steps[0]["scale"] == 65536.0
    skipped = [s["step"] for s in run.steps if s["scale_after"] < s["scale"]]
    assert skipped  # fp16 on CPU really overflows and the GradScaler skips
    by_step = run.calls_by_step()
    for step, tokens in by_step.items():
        if step >= 8:
            continue
        body = [t for t in tokens if t != "opt0.zero_grad"]
        assert body[:12] == ["model0.forward[TGB]", "scaler0.scale", "backward"] * 4
        tail = ["scaler0.unscale_", "clip_grad_norm_", "scaler0.step"] + \
            ([] if step in skipped else ["opt0.step"]) + ["scaler0.update", "sched0.step"]
        assert body[12:] == tail
    assert all(math.isfinite(s["loss"]) and s["loss"] < 100 for s in run.steps)  # unscaled


def check_healthy_two_optimizers(run: Run) -> None:
    assert len(run.steps) == 40  # two optimizer steps per iteration
    assert len(run.objects["models"]) == 2 and len(run.objects["optimizers"]) == 2
    # the generator's forward runs in the discriminator's step and is backpropagated in
    # its own: it must still carry B (not look like an evaluation forward)
    forwards = [t for t in run.calls if ".forward" in t]
    assert forwards and all(t.endswith("B]") for t in forwards)
    assert "phase:val" not in run.calls


def check_healthy_compiled(run: Run) -> None:
    assert len(run.steps) == 12
    notes = run.kind("not_recorded")
    assert [n["what"] for n in notes] == ["compiled-submodules"]
    assert "global hooks" not in run.stderr and not run.kind("warning")
    assert run.calls_by_step()[11][-3:] == ["phase:val", "model0.eval", "model0.forward[EN]"]
    assert [p["name"] for p in run.params][:2] == ["0.weight", "0.bias"]  # not _orig_mod.


def check_crashes_with_exception(run: Run) -> None:
    assert run.status["status"] == "crashed" and "corrupt record" in run.status["error"]
    assert len(run.steps) == 6
    tb = run.stderr[run.stderr.index("Traceback (most recent call last):"):]
    assert "crashes_with_exception.py" in tb.splitlines()[1]  # starts in the script
    assert "runpy" not in tb and "diagnose" not in tb.split("RuntimeError")[0]
    assert "RuntimeError: corrupt record in shard 3 (batch 6)" in tb
    assert run.kind("exception")[0]["type"] == "RuntimeError"


def check_exits_with_code_3(run: Run) -> None:
    assert run.status["status"] == "crashed" and run.status["error"] == "exited with code 3"
    assert len(run.steps) == 5
    assert "giving up" in run.stderr


def check_never_trains(run: Run) -> None:
    assert run.status["status"] == "finished" and run.status["steps"] == 0
    assert run.steps == []
    note = run.kind("no_optimizer_step")[0]
    assert note["optimizers"] == 1 and note["backward_calls"] == 0
    assert "no optimizer step was recorded" in note["message"]
    assert run.calls == ["phase:val", "model0.eval"] + ["model0.forward[EN]"] * 3


def check_eval_without_eval_mode(run: Run) -> None:
    assert len(run.steps) == 24
    assert run.calls_by_step()[7][-4:] == ["phase:val", "model0.forward[TN]", "phase:train",
                                           "model0.train"]
    assert "model0.eval" not in run.calls


def check_eval_with_grad(run: Run) -> None:
    assert run.calls_by_step()[7][-6:] == ["phase:val", "model0.eval", "model0.forward[EG]",
                                           "model0.forward[EG]", "phase:train", "model0.train"]
    assert run.calls.count("model0.forward[EG]") == 6


def check_train_mode_not_restored(run: Run) -> None:
    by_step = run.calls_by_step()
    assert by_step[0][:3] == ["model0.train", "opt0.zero_grad", "model0.forward[TGB]"]
    assert by_step[8][:3] == ["phase:train", "opt0.zero_grad", "model0.forward[EGB]"]
    assert run.calls.count("model0.train") == 1


def check_scheduler_before_optimizer(run: Run) -> None:
    for tokens in run.calls_by_step().values():
        assert tokens == ["opt0.zero_grad", "model0.forward[TGB]", "backward", "sched0.step",
                          "opt0.step"]
    warning = run.kind("warning")[0]
    assert "before `optimizer.step()`" in warning["message"]
    # the location is the script's line, as without diagnose
    assert warning["filename"].endswith("scheduler_before_optimizer.py")
    assert warning["lineno"] == 18 and "scheduler_before_optimizer.py:18" in run.stderr


def check_scheduler_never_stepped(run: Run) -> None:
    assert run.objects["schedulers"][0]["class"] == "CosineAnnealingLR"
    assert "sched0.step" not in run.calls
    assert {s["lr"][0] for s in run.steps} == {0.01}


def check_missing_zero_grad(run: Run) -> None:
    assert len(run.steps) == 20
    assert not [t for t in run.calls if "zero_grad" in t]
    assert run.steps[-1]["grad_norm"] > 5 * run.steps[0]["grad_norm"]  # gradients pile up


def check_zero_grad_before_step(run: Run) -> None:
    for tokens in run.calls_by_step().values():
        assert tokens == ["model0.forward[TGB]", "backward", "opt0.zero_grad", "opt0.step"]
    assert all(s.get("grad_norm") is None for s in run.steps)  # set_to_none: nothing to step


def check_clip_before_unscale(run: Run) -> None:
    for step, tokens in run.calls_by_step().items():
        assert "scaler0.unscale_" not in tokens
        assert tokens.index("clip_grad_norm_") < tokens.index("scaler0.step")
    assert all(s["clip_norm"] > 1000 for s in run.steps)  # the scaled norm was clipped
    assert all(s["grad_norm"] < 1e-3 for s in run.steps)  # to 1/65536 after unscaling


def check_nan_loss_at_step(run: Run) -> None:
    losses = _loss_series(run)
    assert all(math.isfinite(v) for v in losses[:8])
    assert len(losses) == 32 and all(v == "nan" for v in losses[8:])
    assert run.steps[8]["nonfinite_grads"]
    assert "diagnose: at step 8 the loss is nan" in run.stderr


def check_loss_accumulated_as_tensor(run: Run) -> None:
    rss = [s["rss_bytes"] for s in run.steps]
    assert len(rss) == 60 and rss[-1] - rss[5] > 30e6


def check_param_not_in_optimizer(run: Run) -> None:
    owner = {p["name"]: p["optimizer"] for p in run.params}
    assert owner["head.weight"] is None and owner["head.bias"] is None
    assert owner["encoder.0.weight"] == 0
    table = ipc.open_stream(run.rank / "grad_norms.arrow").read_all().to_pandas()
    head = next(p["index"] for p in run.params if p["name"] == "head.weight")
    assert (table[f"p{head}"] > 0).all()  # it gets gradients every step


def check_onecycle_stepped_per_epoch(run: Run) -> None:
    by_step = run.calls_by_step()
    assert [s for s, tokens in by_step.items() if "sched0.step" in tokens] == [7, 15, 23, 31]
    assert run.objects["schedulers"][0]["config"]["total_steps"] == 32


def check_nonfinite_inputs(run: Run) -> None:
    bad = run.kind("nonfinite_input")
    assert bad and bad[0]["step"] == 8  # the validation set's Inf is not a training batch
    assert bad[0]["tensors"] == [{"path": "batch[0]", "nan": True, "posinf": False, "neginf": False,
                                  "max": None}]


def check_update_ratio_tiny_lr_group(run: Run) -> None:
    assert len(run.steps) == 100 and [s["lr"] for s in run.steps[:1]] == [[1e-9, 1e-3]]
    with ipc.open_stream(run.rank / "update_norms.arrow") as stream:
        table = stream.read_all()
    assert table.column("step").to_pylist() == [0, 25, 50, 75]


def _loss_calls(run: Run) -> list[dict]:
    return run.kind("loss_call")


def check_softmax_before_cross_entropy(run: Run) -> None:
    calls = _loss_calls(run)
    assert sorted({c["step"] for c in calls}) == [0, 1, 2, 3, 4]   # the sampled steps of 24
    assert {c["fn"] for c in calls} == {"cross_entropy"} and calls[0]["input_shape"] == [32, 5]
    assert all(0 <= c["pred_min"] and c["pred_max"] <= 1 and c["row_sum_err"] < 1e-5 for c in calls)


def check_loss_shape_broadcast(run: Run) -> None:
    calls = _loss_calls(run)
    assert {(c["fn"], tuple(c["input_shape"]), tuple(c["target_shape"])) for c in calls} == \
        {("mse_loss", (32, 1), (32,))}
    assert any("target size" in w["message"] for w in run.kind("warning"))


def check_rnn_batch_first_mismatch(run: Run) -> None:
    rnn = run.kind("rnn_call")
    assert len(rnn) == 5 and {(r["module"], r["batch_first"], tuple(r["input_shape"])) for r in rnn} == \
        {("LSTM", False, (32, 15, 3))}
    assert all(r["loader_batch_size"] == 32 for r in rnn) and rnn[-1]["name"] == "lstm"


def check_healthy_lstm_seq_major_nll(run: Run) -> None:
    rnn = run.kind("rnn_call")
    assert rnn and all(r["input_shape"][1] == r["loader_batch_size"] == 16 for r in rnn)
    fns = {c["fn"] for c in _loss_calls(run)}
    assert fns == {"nll_loss", "binary_cross_entropy"}
    assert all(c["pred_max"] <= 0 for c in _loss_calls(run) if c["fn"] == "nll_loss")


# ---- field test (docs/rules.md "Field test") ------------------------------------------------

def check_healthy_finetune_frozen_backbone(run: Run) -> None:
    assert len(run.steps) == 24 and all(s["samples"] == 24 for s in run.steps)
    # the frozen backbone runs under no_grad in eval mode: not a model of its own, and its
    # forwards do not count as evaluations
    assert run.objects["models"] == [{"index": 0, "class": "Sequential"}]
    assert [p["name"] for p in run.params] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert run.calls_by_step()[23][-3:] == ["phase:val", "model0.eval", "model0.forward[EN]"]


def check_healthy_simclr_two_views(run: Run) -> None:
    assert len(run.steps) == 24 and len(run.objects["models"]) == 2
    assert all(run.calls_by_step()[k] == ["model0.forward[TGB]", "model1.forward[TGB]"] * 2 +
               ["opt0.zero_grad", "backward", "opt0.step", "sched0.step"] for k in range(24))
    lrs = [s["lr"][0] for s in run.steps]
    assert lrs[0] == 0.1 and lrs[-1] < 1e-3  # the cosine, stepped per batch, ran to its end
    assert {p["name"].split(".")[0] for p in run.params} == {"model0", "model1"}


def check_healthy_seq2seq_gru_packed(run: Run) -> None:
    assert len(run.steps) == 30 and all(s["clip_max"] == 5.0 for s in run.steps)
    rnn = run.kind("rnn_call")
    assert any(r.get("packed") for r in rnn)  # the encoder's PackedSequence is not judged by shape
    assert all(r["batch_first"] for r in rnn)


def check_healthy_trainer_callbacks_ema(run: Run) -> None:
    printed = _printed(run, r"val\(ema\) ([0-9.]+)$")
    assert len(printed) == 6 and "early stopping at epoch 5" in run.stdout
    assert len(run.steps) == 60  # 6 of the 30 configured epochs
    metrics = [m["metrics"]["scheduler_metric"] for m in run.kind("metrics")]
    assert metrics == pytest.approx(printed, abs=1e-3)
    assert run.calls.count("sched0.step") == 6


def check_healthy_regression_accum_bf16(run: Run) -> None:
    assert len(run.steps) == 24
    assert all(s["micro_batches"] == 4 and s["samples"] == 128 for s in run.steps)
    assert run.calls.count("sched0.step") == 24
    assert {(c["fn"], tuple(c["input_shape"]), tuple(c["target_shape"])) for c in _loss_calls(run)
            if c["fn"] == "mse_loss"} == {("mse_loss", (32, 1), (32, 1))}


def check_healthy_wgan_gp_critic(run: Run) -> None:
    from diagnose.rules.loop._callindex import CallIndex
    from diagnose.rundir.reader import read_run

    assert len(run.steps) == 72 and len(run.objects["optimizers"]) == 2
    assert run.calls.count("model0.forward[TN]") == 60  # the generator sampled under no_grad
    tables = read_run(run.path).first
    calls = CallIndex.of(tables)
    assert calls.feeds_training().sum() == 60 and not calls.evaluation_forwards().any()
    # the critic's output bias: its gradient cancels exactly in D(fake).mean() - D(real).mean()
    bias = next(p["index"] for p in run.params if p["name"] == "model1.4.bias")
    table = ipc.open_stream(run.rank / "grad_norms.arrow").read_all().to_pandas()
    assert (table[f"p{bias}"].dropna() == 0).all() and table[f"p{bias}"].notna().sum() >= 50


def check_healthy_lstm_tbptt_lm(run: Run) -> None:
    note = run.kind("no_optimizer_step")[0]  # SGD by hand: p.data.add_(p.grad, alpha=-lr)
    assert note["optimizers"] == 0 and note["backward_calls"] == 40
    assert all(r["input_shape"][1] == 8 for r in run.kind("rnn_call"))  # (seq, batch) columns


def check_healthy_hf_style_kwargs_tied(run: Run) -> None:
    assert len(run.steps) == 24
    by_step = run.calls_by_step()
    # zero_grad(set_to_none=True) after the step opens the next one, before the validation
    assert by_step[8][:6] == ["opt0.zero_grad", "phase:val", "model0.eval", "model0.forward[EN]",
                              "phase:train", "model0.train"]
    # activation checkpointing re-runs the blocks in backward: still one forward per step
    assert all(by_step[k].count("model0.forward[TGB]") == 1 for k in range(24))
    names = [p["name"] for p in run.params]
    assert "wte.weight" in names and "lm_head.weight" not in names  # tied: one tensor
    assert all(len(s["lr"]) == 2 for s in run.steps)
    # called with keyword arguments only: the global forward hook passes them after the call
    # (not counted in step 0, before the models are known at the first optimizer step)
    assert [(s["samples"], s["tokens"]) for s in run.steps[1:]] == [(16, 256)] * 23
    assert not run.kind("warning")


def check_healthy_sparse_embedding_mf(run: Run) -> None:
    assert len(run.steps) == 60 and len(run.objects["optimizers"]) == 2
    assert [p["optimizer"] for p in run.params] == [0, 0, 1, 1, 1, 1]
    table = ipc.open_stream(run.rank / "grad_norms.arrow").read_all().to_pandas()
    assert (table["p0"] > 0).all()  # the sparse embedding gradients are measured


def check_healthy_swa_float64(run: Run) -> None:
    assert len(run.steps) == 72
    assert [s["class"] for s in run.objects["schedulers"]] == ["CosineAnnealingLR", "SWALR"]
    assert run.params[0]["dtype"] == "float64"
    assert min(s["lr"][0] for s in run.steps) > 0  # T_max=6: the cosine never reaches 0
    assert run.calls_by_step()[71][-1] == "sched1.step"


def check_healthy_distillation_teacher(run: Run) -> None:
    from diagnose.rules.numerics import _signals
    from diagnose.rundir.reader import read_run

    assert len(run.steps) == 40 and len(run.objects["optimizers"]) == 2
    by_step = run.calls_by_step()
    assert "opt0.step" in by_step[15] and "opt1.step" in by_step[16]
    # the teacher's no_grad forward for the soft targets feeds the student's training forward
    assert by_step[16][-2:] == ["phase:val", "model0.forward[EN]"]
    assert _signals.training_stages(read_run(run.path).first.calls) == [(0, 15), (16, 39)]


def check_healthy_sequential_lr_accum(run: Run) -> None:
    assert [s["micro_batches"] for s in run.steps] == [6, 6, 6, 2] * 3  # two backward() each
    assert [s["class"] for s in run.objects["schedulers"]] == ["LinearLR", "CosineAnnealingLR", "SequentialLR"]
    assert run.calls.count("sched2.step") == 12 and "sched0.step" not in run.calls
    lrs = [s["lr"][0] for s in run.steps]
    assert lrs[0] < 0.1 * lrs[5] and lrs[-1] < lrs[5]  # warm-up, then the cosine


def check_zero_grad_in_one_branch(run: Run) -> None:
    assert len(run.steps) == 30 and run.calls.count("opt0.zero_grad") == 15
    by_step = run.calls_by_step()
    assert by_step[0][0] == "opt0.zero_grad" and "opt0.zero_grad" not in by_step[1]


def check_eval_left_on_after_midepoch_val(run: Run) -> None:
    assert len(run.steps) == 50
    by_step = run.calls_by_step()
    calls_9 = [t for t in by_step[9] if t != "batch"]  # the next training batch's marker may end it
    assert calls_9[-4:] == ["phase:val", "model0.eval"] + ["model0.forward[EN]"] * 2
    assert "model0.forward[EGB]" in by_step[10] and "model0.forward[TGB]" in by_step[25]


def check_steplr_stepped_per_batch(run: Run) -> None:
    assert len(run.steps) == 60 and run.calls.count("sched0.step") == 60
    lrs = [s["lr"][0] for s in run.steps]
    assert lrs[0] == 0.05 and lrs[-1] < 1e-20


def check_softmax_in_forward(run: Run) -> None:
    calls = _loss_calls(run)
    assert calls and all(c["fn"] == "cross_entropy" and c["row_sum_err"] < 1e-5 for c in calls)


def check_l1_loss_shape_mismatch(run: Run) -> None:
    assert {(c["fn"], tuple(c["input_shape"]), tuple(c["target_shape"])) for c in _loss_calls(run)} == \
        {("l1_loss", (64, 1), (64,))}


def check_sigmoid_before_bce_with_logits(run: Run) -> None:
    calls = _loss_calls(run)
    assert {(c["fn"], c["input_op"]) for c in calls} == {("binary_cross_entropy_with_logits", "SigmoidBackward0")}
    assert sorted(c["step"] for c in calls) == [0, 1, 2, 3, 4]


def check_nan_rows_in_csv_features(run: Run) -> None:
    # no DataLoader: the model's input is checked instead (rows 203 and 317, batches of 25)
    bad = run.kind("nonfinite_input")
    assert [b["step"] for b in bad] == [8, 12, 24, 28]
    assert bad[0]["tensors"] == [{"path": "model0.input[0]", "nan": True, "posinf": False,
                                  "neginf": False, "max": None}]


def check_zero_grad_every_micro_batch(run: Run) -> None:
    # 2 epochs of 32 batches, a step every 4th; each batch marked in the call order
    assert len(run.steps) == 16 and all(s["micro_batches"] == 4 for s in run.steps)
    calls = run.calls
    assert calls.count("batch") == 64 and calls.count("opt0.zero_grad") == 64 and calls.count("backward") == 64
    assert calls[:5] == ["model0.train", "batch", "opt0.zero_grad", "model0.forward[TGB]", "backward"]


def check_healthy_sam_adversarial(run: Run) -> None:
    # SAM (opt0) and the base SGD it builds (opt1, the one that steps): 16 batches x 3 epochs
    assert [o["class"] for o in run.objects["optimizers"]] == ["SAM", "SGD"]
    calls = run.calls
    assert len(run.steps) == 48 and calls.count("batch") == 48 and calls.count("opt1.step") == 48
    assert calls.count("backward") == 3 * 48 and calls.count("model0.zero_grad") == 48


# ---- field test, round 3 (docs/rules.md "Field test") -------------------------------------------

def check_healthy_kfold_fresh_model(run: Run) -> None:
    # five folds, each a new model, optimizer and scheduler: judged stage by stage
    assert len(run.steps) == 120 and len(run.objects["optimizers"]) == 5
    assert [m["class"] for m in run.objects["models"]] == ["Sequential"] * 5
    late = run.kind("late_model")  # folds 1-4 come after the parameter table was fixed ...
    assert [e["params_added"] for e in late] == [4] * 4
    # ... and join it: every fold's four tensors are named and have gradient norms in its steps
    names = [p["name"] for p in run.params]
    assert len(names) == 20 and names[4:8] == ["model1.0.weight", "model1.0.bias",
                                               "model1.3.weight", "model1.3.bias"]
    grads = read_run(run.path).first.grad_norms
    assert list(grads.columns) == list(range(20))
    for fold in range(5):
        own = grads.loc[24 * fold: 24 * fold + 23, 4 * fold: 4 * fold + 3]
        assert (own > 0).all().all(), fold
    assert grads.loc[:23, 4:].isna().all().all()  # later folds' models did not exist yet
    assert run.calls_by_step()[119][-3:] == ["phase:val", "model4.eval", "model4.forward[EN]"]


def check_healthy_trainer_class_plateau_max(run: Run) -> None:
    assert len(run.steps) == 48 and run.calls.count("sched0.step") == 4
    metrics = [m["metrics"]["scheduler_metric"] for m in run.kind("metrics")]
    assert metrics == pytest.approx(_printed(run, r"val_acc ([0-9.]+)"), abs=1e-3)  # accuracy, mode="max"
    # the best weights are loaded back after the last epoch: recorded, in the last step
    assert run.calls_by_step()[47][-6:] == ["model0.eval", "model0.forward[EN]", "model0.forward[EN]",
                                            "sched0.step", "phase:train", "model0.load_state_dict"]


def check_healthy_checkpointed_transformer_warm_restarts(run: Run) -> None:
    assert len(run.steps) == 40 and run.calls.count("sched0.step") == 40
    # activation checkpointing re-runs the blocks in backward: still one forward per step
    assert all(run.calls_by_step()[k].count("model0.forward[TGB]") == 1 for k in range(40))
    lrs = [s["lr"][0] for s in run.steps]
    assert lrs[19] < 0.1 * lrs[0] and lrs[21] == lrs[0]  # sched.step(epoch + i / iters): a warm restart


def check_healthy_vae_kl_warmup(run: Run) -> None:
    assert len(run.steps) == 120 and all(s["samples"] == 64 for s in run.steps)
    losses = _loss_series(run)
    assert max(losses[55:80]) > 1.3 * min(losses[35:50])  # the KL term switched on: the loss rises on purpose


def check_healthy_triplet_margin_padded_lstm(run: Run) -> None:
    assert len(run.steps) == 60
    assert all(run.calls_by_step()[k][:3] == ["model0.forward[TGB]"] * 3 for k in range(60))  # anchor, pos, neg
    assert sum(s["loss"] == 0 for s in run.steps) >= 3  # the margin is met: exactly 0
    assert {(r["module"], r["batch_first"]) for r in run.kind("rnn_call")} == {("LSTM", True)}


def check_healthy_unfreeze_add_param_group(run: Run) -> None:
    # 15 pretraining steps (its own optimizer), then 40 with the head; the backbone joins at step 31
    assert len(run.steps) == 55 and [o["class"] for o in run.objects["optimizers"]] == ["Adam", "AdamW"]
    assert [len(s["lr"]) for s in (run.steps[15], run.steps[30], run.steps[31])] == [2, 2, 3]
    assert run.steps[31]["lr"][1:] == [0.005, 0.0005]


def check_healthy_mixup_label_smoothing(run: Run) -> None:
    assert len(run.steps) == 32 and run.calls.count("sched0.step") == 32
    lrs = [s["lr"][0] for s in run.steps]
    assert lrs[0] < lrs[7] and lrs[-1] < 0.01 * lrs[7]  # warm-up, then cosine
    assert run.calls_by_step()[31][-1] == "model0.forward[EI]"  # inference_mode test pass


def check_healthy_lbfgs_closure(run: Run) -> None:
    # the closure runs zero_grad, forward, backward several times inside each step()
    by_step = run.calls_by_step()
    assert by_step[0][:4] == ["opt0.step", "opt0.zero_grad", "model0.forward[TGB]", "backward"]
    assert run.calls.count("opt0.step") == 25 and run.calls.count("backward") > 25
    assert run.steps[0]["micro_batches"] > 1
    # step() comes before the first forward (inside the closure): the model is still seen
    assert not [n for n in run.kind("not_recorded") if n["what"] == "forward-not-seen"]


def check_healthy_functional_call_no_set_to_none(run: Run) -> None:
    assert len(run.steps) == 40 and all(s["samples"] == 50 for s in run.steps)
    # functional_call runs the model's own forward: seen like a direct call
    assert all(run.calls_by_step()[k][-4:] == ["model0.forward[TGB]", "opt0.zero_grad", "backward", "opt0.step"]
               for k in range(1, 9))


def check_healthy_multitask_round_robin_heads(run: Run) -> None:
    assert len(run.steps) == 90
    names = [p["name"] for p in run.params]
    table = ipc.open_stream(run.rank / "grad_norms.arrow").read_all().to_pandas()
    head = f"p{names.index('heads.topic.weight')}"
    # zero_grad(set_to_none=False): an idle head holds exact zeros on two steps of three
    assert (table[head].iloc[3:] == 0).sum() >= 55 and (table[head].iloc[3:] > 0).sum() >= 28


def check_healthy_frozen_embedding_in_optimizer(run: Run) -> None:
    frozen = next(p for p in run.params if p["name"] == "embedding.weight")
    assert frozen["requires_grad"] is False and frozen["optimizer"] == 0  # in the optimizer, frozen
    assert len(run.steps) == 40 and run.calls.count("sched0.step") == 4


def check_healthy_dqn_target_network(run: Run) -> None:
    # acting under no_grad in train mode (Linear/ReLU only: info at most), target net unwatched
    assert len(run.steps) == 84 and run.objects["models"] == [{"index": 0, "class": "Sequential"}]
    assert run.calls.count("clip_grad_value_") == 84 and run.calls.count("model0.forward[TGB]") == 84


def check_healthy_checkpoint_sequential_reentrant(run: Run) -> None:
    # the Sequential is never called in training: each layer is a "model", the first segments'
    # layers run under no_grad (recomputed in backward) and feed the last segment's training forward
    from diagnose.rules.loop._callindex import CallIndex
    from diagnose.rundir.reader import read_run

    assert len(run.steps) == 36 and len(run.objects["models"]) >= 13
    calls = CallIndex.of(read_run(run.path).first)
    chained = calls.forward & calls.no_grad & calls.train_mode
    assert chained.sum() == 36 * 8 and calls.feeds_training()[chained].all()
    # the whole Sequential's validation (eval mode) stays an evaluation, but for the layers right
    # before the next epoch's chain, which read as its beginning
    evaluation = calls.evaluation_forwards()
    assert evaluation.sum() == 9 + 9 + 13 and set(calls.token[evaluation]) == \
        {f"model{k}.forward[EN]" for k in range(13)}


def check_eval_without_eval_mode_nograd_decorator(run: Run) -> None:
    assert len(run.steps) == 36
    tail = run.calls_by_step()[11]
    assert tail[tail.index("phase:val") + 1:][:2] == ["model0.forward[TN]", "model0.forward[TN]"]  # 2 val batches
    assert "model0.eval" not in run.calls


def check_handwritten_bce_log_nan(run: Run) -> None:
    losses = _loss_series(run)
    assert all(math.isfinite(v) and v < 1 for v in losses[1:16]) and all(v == "nan" for v in losses[16:])


def check_lr_too_high_diverges(run: Run) -> None:
    losses = _loss_series(run)
    assert losses[7] > 1e6 * losses[0] and losses[8] == "inf"
    assert all(s["lr"] == [0.1] for s in run.steps)


def check_inf_in_csv_ratio_column(run: Run) -> None:
    bad = run.kind("nonfinite_input")
    assert bad[0]["step"] == 0 and bad[0]["tensors"] == [
        {"path": 'batch["features"]', "nan": False, "posinf": True, "neginf": False, "max": None}]


def check_sanity_eval_before_training(run: Run) -> None:
    by_step = run.calls_by_step()
    assert by_step[0][:6] == ["phase:val", "model0.eval", "model0.forward[EN]", "batch", "phase:train",
                              "opt0.zero_grad"]
    assert "model0.train" not in run.calls and run.calls.count("model0.forward[EGB]") == 24


def check_head_replaced_after_optimizer(run: Run) -> None:
    owner = {p["name"]: p["optimizer"] for p in run.params}
    assert owner["fc.weight"] is None and owner["features.0.weight"] == 0
    assert sum(name.startswith("opt0.") for name in owner) == 2  # the old head, held by no model


def check_labels_shuffled_separately(run: Run) -> None:
    losses = _loss_series(run)
    assert len(losses) == 72 and abs(losses[-1] - math.log(4)) < 0.1


def check_encoder_optimizer_never_zeroed(run: Run) -> None:
    by_step = run.calls_by_step()
    assert all(by_step[k] == ["model0.forward[TGB]", "model1.forward[TGB]", "opt1.zero_grad", "backward",
                              "opt0.step", "opt1.step"] for k in range(60))


def check_cosine_tmax_epochs_stepped_per_batch(run: Run) -> None:
    lrs = [s["lr"][0] for s in run.steps]
    assert lrs[10] == 0 and lrs[20] == pytest.approx(0.1) and lrs[30] == 0  # a period of 20 batches
    assert run.calls.count("sched0.step") == 60


def check_functional_dropout_ignores_eval(run: Run) -> None:
    dropout = run.kind("eval_dropout")
    assert [d["step"] for d in dropout] == [11, 23, 35, 47]
    assert {(d["fn"], d["p"], d["forward_token"]) for d in dropout} == {("dropout", 0.5, "model0.forward[EN]")}


# ---- field test, round 4 ----------------------------------------------------------------------

def _tables(run: Run):
    """The rank's tables, as the rules read them."""
    from diagnose.rundir.reader import read_run

    return read_run(run.path).first


def check_healthy_reinforce_actor_critic(run: Run) -> None:
    # acting (one no_grad forward per move) reads as evaluation in train mode: Linear/Tanh, info
    assert len(run.steps) == 60 and run.calls.count("model0.forward[TGB]") == 60
    assert run.calls.count("model0.forward[TN]") > 60 and run.calls.count("clip_grad_norm_") == 60
    losses = _loss_series(run)
    assert min(losses) < 0 < max(losses)  # the policy-gradient surrogate changes sign


def check_healthy_diffusion_noise_prediction(run: Run) -> None:
    # the EMA copy (no optimizer, requires_grad off) is not a model; its sampling is not recorded
    assert len(run.steps) == 150 and run.objects["models"] == [{"index": 0, "class": "Denoiser"}]
    assert run.calls_by_step()[149] == ["model0.forward[TGB]", "opt0.zero_grad", "backward", "opt0.step"]


def check_healthy_uncertainty_weighted_multitask(run: Run) -> None:
    names = [p["name"] for p in run.params]
    assert names[0] == "log_vars" and len(run.steps) == 120
    assert _loss_series(run)[0] > 1 and _loss_series(run)[-1] < 0  # a total that goes negative


def check_healthy_magnitude_pruning_masks(run: Run) -> None:
    # prune renames weight -> weight_orig (the same tensor): the table keeps the name it had
    assert [p["name"] for p in run.params] == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias"]
    assert len(run.steps) == 100 and [s["epoch"] for s in run.steps][::20] == [0, 1, 2, 3, 4]
    grads = _tables(run).grad_norms
    assert (grads.iloc[-1] > 0).all()  # pruned weights' gradients are masked, not the tensors'


def check_healthy_bf16_scaler_disabled_nosync(run: Run) -> None:
    assert run.objects["scalers"][0]["enabled"] is False
    assert len(run.steps) == 40 and all(s["micro_batches"] == 4 and s["clip_max"] == 1.0 for s in run.steps)
    step = run.calls_by_step()[1]  # the previous update's zero_grad(set_to_none=True) opens it
    assert step[0] == "opt0.zero_grad" and step[-5:] == ["scaler0.unscale_", "clip_grad_norm_", "scaler0.step",
                                                          "opt0.step", "scaler0.update"]


def check_healthy_moco_momentum_encoder(run: Run) -> None:
    # the key encoder (no optimizer) is not a model: its no_grad train-mode forwards are not recorded
    assert len(run.steps) == 80 and run.objects["models"] == [{"index": 0, "class": "Sequential"}]
    from diagnose.rules._base import Severity
    from diagnose.rules.numerics import loss_divergence

    [finding] = loss_divergence.check(_tables(run))  # the queue fills: a rise, then flat
    assert finding.severity == Severity.INFO and finding.evidence["shape"] == "rose from the start, then settled"


def check_healthy_lr_range_test_restore(run: Run) -> None:
    # the restore is in the call order, in the range test's last step; the loss after it is
    # judged apart (a fresh start from the initial weights, not a rise from the test's best)
    lines = [line for line in run.stdout.splitlines() if line.startswith("range test")]
    tested = int(re.match(r"range test: (\d+) steps", lines[0]).group(1))
    assert run.calls_by_step()[tested - 1].count("model0.load_state_dict") == 1
    assert run.calls.count("model0.load_state_dict") == 1 and len(run.steps) == tested + 96


def check_healthy_early_stop_restore_best(run: Run) -> None:
    assert len(run.steps) == 168 and run.stdout.count("restored best") == 2
    lrs = sorted({s["lr"][0] for s in run.steps}, reverse=True)
    assert lrs == pytest.approx([2e-2, 1e-2, 2.5e-3])


def check_healthy_dann_gradient_reversal(run: Run) -> None:
    assert len(run.steps) == 120 and len(run.params) == 10
    lrs = [s["lr"][0] for s in run.steps]
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] < lrs[0] / 5  # annealed by hand


def check_healthy_ctc_lstm_time_major(run: Run) -> None:
    rnn = run.kind("rnn_call")
    assert rnn and all(r["batch_first"] is False for r in rnn)
    assert len(run.steps) == 60 and _loss_series(run)[-1] < _loss_series(run)[0] / 2


def check_loss_detached_requires_grad(run: Run) -> None:
    # no backward reaches the forward: no [..B] flag, and no gradient table at all; the backward
    # right after each forward keeps it in the training phase (not a validation with grad on)
    assert len(run.steps) == 50 and run.calls.count("model0.forward[TG]") == 50
    assert not (run.rank / "grad_norms.arrow").exists() and "phase:val" not in run.calls


def check_module_zero_grad_covers_one_model(run: Run) -> None:
    assert [p["name"].split(".")[0] for p in run.params] == ["model0"] * 4 + ["model1"] * 2
    assert run.calls_by_step()[5] == ["model0.forward[TGB]", "model1.forward[TGB]", "model1.zero_grad", "backward",
                                      "opt0.step"]


def check_optimizer_before_model_reloaded(run: Run) -> None:
    owner = {p["name"]: p["optimizer"] for p in run.params}
    assert owner["0.weight"] is None and owner["opt0.group0.0"] == 0
    [saved] = run.kind("checkpoint")  # the "pretrained" state saved into a BytesIO: no checkpoint
    assert saved["path"] == "<BytesIO>" and saved["step"] == 0


def check_validation_metric_helper_sets_train(run: Run) -> None:
    tail = run.calls_by_step()[19]
    val = tail[tail.index("phase:val"):]
    # the first validation batch runs in eval mode, the helper's train() turns the other three
    assert [t for t in val if ".forward" in t] == ["model0.forward[EN]"] + ["model0.forward[TN]"] * 3
    assert val.count("model0.train") >= 4


def check_model_eval_without_parentheses(run: Run) -> None:
    assert "model0.eval" not in run.calls and run.calls.count("model0.forward[TI]") == 4 * 2
    assert len(run.steps) == 48


def check_sqrt_zero_distance_nan_grad(run: Run) -> None:
    losses = _loss_series(run)
    # the loss at step 12 is finite, its gradient is not; the weights are NaN from then on
    assert math.isfinite(losses[12]) and losses[13] == "nan"
    assert run.steps[11]["grad_norm"] != "nan" and run.steps[12]["grad_norm"] == "nan"


def check_lambda_lr_epoch_decay_per_batch(run: Run) -> None:
    lrs = [s["lr"][0] for s in run.steps]
    assert len(lrs) == 300 and run.calls.count("sched0.step") == 300
    assert lrs[25] == pytest.approx(0.05 * 0.9 ** 25, rel=1e-4) and lrs[131] < 1e-6 * 0.05 * 5


def check_step_before_backward(run: Run) -> None:
    by_step = run.calls_by_step()
    assert by_step[0] == ["batch", "opt0.zero_grad", "model0.forward[TGB]", "opt0.step"]
    assert by_step[1][:4] == ["backward", "batch", "opt0.zero_grad", "model0.forward[TGB]"]


CHECKS = {name: globals()[f"check_{name[:-3]}"] for name in SCRIPTS}


def _alarms(run: Run) -> set[str]:
    """Rules with a finding at warning or error on the recorded run."""
    from diagnose.rules import run_rules
    from diagnose.rules._base import Severity
    from diagnose.rundir.reader import read_run

    findings, _ = run_rules(read_run(run.path))
    return {f.rule for f in findings if f.severity >= Severity.WARNING}


WALL_CLOCK_RULES = {"dataloader-bottleneck", "throughput-drop"}
"""Judged on wall-clock step and wait times: on the shared two-core CI machine a script's
DataLoader workers can really starve for CPU (healthy_cnn_batchnorm_workers.py waited for
its two workers on a median 40%+ of its 2-8 ms steps once, at load average 9), so
these two are not held against a script that does not expect them; their own tests use
loops with waits far above the noise (tests/rules/test_resources_*.py)."""


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_recorded(name, tmp_path):
    case = SCRIPTS[name]
    run = record(name, tmp_path / "run")
    assert run.returncode == case.exit_code, run.stderr[-3000:]
    assert f"diagnose: run directory {tmp_path / 'run'}" in run.stderr
    assert run.status["status"] == ("finished" if case.exit_code == 0 else "crashed")
    assert not run.kind("recorder_error"), run.kind("recorder_error")
    start = run.meta[0]
    assert start["config"]["zero_code"]["script"].endswith(name)
    CHECKS[name](run)
    # what a report says: the script's rules, perhaps the allowed consequences, nothing else
    alarms = _alarms(run) - (WALL_CLOCK_RULES - set(case.rules))
    assert set(case.rules) <= alarms, f"missed: {set(case.rules) - alarms}"
    assert alarms <= set(case.rules) | set(case.allowed), f"false alarms: {alarms - set(case.rules) - set(case.allowed)}"


def test_every_script_is_indexed_and_plain():
    from tests.scripts import HERE

    files = {p.name for p in HERE.glob("*.py")} - {"__init__.py", "synthetic_data.py"}
    assert files == set(SCRIPTS)
    for name in files | {"synthetic_data.py"}:
        text = (HERE / name).read_text()
        assert "import diagnose" not in text and "from diagnose" not in text
