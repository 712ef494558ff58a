"""Plain PyTorch training scripts for the zero-code mode (`diagnose run SCRIPT`).

None of them imports diagnose: each is a small, realistic CPU loop run unchanged, as a
user's `train.py` would be. Buggy scripts are named after the rule (RULES.md) they should
trigger. `SCRIPTS` maps each file to what a report on its run should say:

- `rules`: rules that must fire (empty for a healthy script: then nothing at warning or
  error may fire);
- `allowed`: rules that may also fire without being a false alarm (consequences of the
  bug, e.g. NaN weights after a NaN loss), and nothing else may;
- `exit_code`: the script's own exit code (`diagnose run` passes it through).

tests/zerocode/test_scripts.py records every script and checks what was recorded; the
rules' tests add the rule-firing assertions from this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ScriptCase:
    rules: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    exit_code: int = 0


SCRIPTS: dict[str, ScriptCase] = {
    # healthy, in different styles
    "healthy_mlp_onecycle.py": ScriptCase(),
    "healthy_cnn_batchnorm_workers.py": ScriptCase(),
    "healthy_gru_plateau.py": ScriptCase(),
    "healthy_transformer_bf16.py": ScriptCase(),
    "healthy_fp16_scaler_accumulation.py": ScriptCase(),
    "healthy_two_optimizers.py": ScriptCase(),
    "healthy_compiled.py": ScriptCase(),
    # how a script ends
    "crashes_with_exception.py": ScriptCase(exit_code=1),
    "exits_with_code_3.py": ScriptCase(exit_code=3),
    "never_trains.py": ScriptCase(),
    # buggy: named after the rule they should trigger
    "eval_without_eval_mode.py": ScriptCase(rules=("eval-without-eval-mode",)),
    "eval_with_grad.py": ScriptCase(rules=("eval-with-grad",)),
    "train_mode_not_restored.py": ScriptCase(rules=("train-mode-not-restored",)),
    "scheduler_before_optimizer.py": ScriptCase(rules=("scheduler-before-optimizer",),
                                                allowed=("framework-warning",)),
    "scheduler_never_stepped.py": ScriptCase(rules=("scheduler-never-stepped",)),
    "missing_zero_grad.py": ScriptCase(rules=("missing-zero-grad",),
                                       allowed=("gradient-explosion", "loss-divergence")),
    "zero_grad_before_step.py": ScriptCase(rules=("zero-grad-before-step",),
                                           allowed=("params-not-updated", "loss-plateau")),
    "clip_before_unscale.py": ScriptCase(rules=("clip-before-unscale",),
                                         allowed=("update-ratio", "loss-plateau")),
    "nan_loss_at_step.py": ScriptCase(
        rules=("nonfinite-loss", "nonfinite-gradients", "nonfinite-parameters"),
        allowed=("nonfinite-inputs",)),
    "loss_accumulated_as_tensor.py": ScriptCase(rules=("memory-leak",)),
    "param_not_in_optimizer.py": ScriptCase(rules=("params-not-updated",)),
    "onecycle_stepped_per_epoch.py": ScriptCase(rules=("scheduler-step-frequency",)),
    "softmax_before_cross_entropy.py": ScriptCase(rules=("softmax-before-cross-entropy",),
                                                  allowed=("loss-plateau",)),
    "loss_shape_broadcast.py": ScriptCase(rules=("loss-shape-broadcast",), allowed=("loss-plateau",)),
    "rnn_batch_first_mismatch.py": ScriptCase(rules=("rnn-batch-first-mismatch",), allowed=("loss-plateau",)),
    "healthy_lstm_seq_major_nll.py": ScriptCase(),
    "nonfinite_inputs.py": ScriptCase(
        rules=("nonfinite-inputs", "nonfinite-loss", "nonfinite-gradients", "nonfinite-parameters")),
    "update_ratio_tiny_lr_group.py": ScriptCase(rules=("update-ratio",)),
    # field test (docs/rules.md "Field test"): written unlike the ones above
    "healthy_finetune_frozen_backbone.py": ScriptCase(),
    "healthy_simclr_two_views.py": ScriptCase(),
    "healthy_seq2seq_gru_packed.py": ScriptCase(),
    "healthy_trainer_callbacks_ema.py": ScriptCase(),
    "healthy_regression_accum_bf16.py": ScriptCase(),
    "healthy_wgan_gp_critic.py": ScriptCase(),
    "healthy_lstm_tbptt_lm.py": ScriptCase(),
    "healthy_hf_style_kwargs_tied.py": ScriptCase(),
    "healthy_sparse_embedding_mf.py": ScriptCase(),
    "healthy_swa_float64.py": ScriptCase(),
    "healthy_distillation_teacher.py": ScriptCase(),
    "healthy_sequential_lr_accum.py": ScriptCase(),
    "zero_grad_in_one_branch.py": ScriptCase(rules=("missing-zero-grad",)),
    "eval_left_on_after_midepoch_val.py": ScriptCase(rules=("train-mode-not-restored",)),
    "steplr_stepped_per_batch.py": ScriptCase(rules=("scheduler-step-frequency",)),
    "softmax_in_forward.py": ScriptCase(rules=("softmax-before-cross-entropy",), allowed=("loss-plateau",)),
    "l1_loss_shape_mismatch.py": ScriptCase(rules=("loss-shape-broadcast",), allowed=("loss-plateau",)),
    "sigmoid_before_bce_with_logits.py": ScriptCase(rules=("softmax-before-cross-entropy",),
                                                    allowed=("loss-plateau",)),
    "nan_rows_in_csv_features.py": ScriptCase(
        rules=("nonfinite-inputs", "nonfinite-loss", "nonfinite-gradients", "nonfinite-parameters")),
    # accumulation that clears every micro-batch, and a loop that clears backward passes legitimately
    "zero_grad_every_micro_batch.py": ScriptCase(rules=("zero-grad-before-step",)),
    "healthy_sam_adversarial.py": ScriptCase(),
    # field test, round 3 (docs/rules.md "Field test")
    "healthy_kfold_fresh_model.py": ScriptCase(),
    "healthy_trainer_class_plateau_max.py": ScriptCase(),
    "healthy_checkpointed_transformer_warm_restarts.py": ScriptCase(),
    "healthy_vae_kl_warmup.py": ScriptCase(),
    "healthy_triplet_margin_padded_lstm.py": ScriptCase(),
    "healthy_unfreeze_add_param_group.py": ScriptCase(),
    "healthy_mixup_label_smoothing.py": ScriptCase(),
    "healthy_lbfgs_closure.py": ScriptCase(),
    "healthy_functional_call_no_set_to_none.py": ScriptCase(),
    "healthy_multitask_round_robin_heads.py": ScriptCase(),
    "healthy_frozen_embedding_in_optimizer.py": ScriptCase(),
    "healthy_dqn_target_network.py": ScriptCase(),
    "healthy_checkpoint_sequential_reentrant.py": ScriptCase(),
    "eval_without_eval_mode_nograd_decorator.py": ScriptCase(rules=("eval-without-eval-mode",)),
    "handwritten_bce_log_nan.py": ScriptCase(
        rules=("nonfinite-loss", "nonfinite-gradients", "nonfinite-parameters")),
    "lr_too_high_diverges.py": ScriptCase(
        rules=("nonfinite-loss", "nonfinite-gradients", "nonfinite-parameters"),
        allowed=("gradient-explosion", "loss-divergence")),
    "inf_in_csv_ratio_column.py": ScriptCase(
        rules=("nonfinite-inputs", "nonfinite-loss", "nonfinite-gradients", "nonfinite-parameters")),
    "sanity_eval_before_training.py": ScriptCase(rules=("train-mode-not-restored",)),
    "head_replaced_after_optimizer.py": ScriptCase(rules=("params-not-updated",)),
    "labels_shuffled_separately.py": ScriptCase(rules=("loss-plateau",)),
    "encoder_optimizer_never_zeroed.py": ScriptCase(rules=("missing-zero-grad",),
                                                    allowed=("gradient-explosion", "loss-divergence")),
    "cosine_tmax_epochs_stepped_per_batch.py": ScriptCase(rules=("scheduler-step-frequency", "zero-lr-steps")),
    "functional_dropout_ignores_eval.py": ScriptCase(rules=("eval-without-eval-mode",)),
    # field test, round 4 (docs/rules.md "Field test")
    "healthy_reinforce_actor_critic.py": ScriptCase(),
    "healthy_diffusion_noise_prediction.py": ScriptCase(),
    "healthy_uncertainty_weighted_multitask.py": ScriptCase(),
    "healthy_magnitude_pruning_masks.py": ScriptCase(),
    "healthy_bf16_scaler_disabled_nosync.py": ScriptCase(),
    "healthy_moco_momentum_encoder.py": ScriptCase(),
    "healthy_early_stop_restore_best.py": ScriptCase(),
    "healthy_lr_range_test_restore.py": ScriptCase(),
    "healthy_dann_gradient_reversal.py": ScriptCase(),
    "healthy_ctc_lstm_time_major.py": ScriptCase(),
    "loss_detached_requires_grad.py": ScriptCase(rules=("params-not-updated",), allowed=("loss-plateau",)),
    "module_zero_grad_covers_one_model.py": ScriptCase(rules=("missing-zero-grad",),
                                                       allowed=("gradient-explosion", "loss-divergence")),
    "optimizer_before_model_reloaded.py": ScriptCase(rules=("params-not-updated",), allowed=("loss-plateau",)),
    "validation_metric_helper_sets_train.py": ScriptCase(rules=("eval-without-eval-mode",)),
    "model_eval_without_parentheses.py": ScriptCase(rules=("eval-without-eval-mode",)),
    "sqrt_zero_distance_nan_grad.py": ScriptCase(
        rules=("nonfinite-gradients", "nonfinite-parameters", "nonfinite-loss")),
    "lambda_lr_epoch_decay_per_batch.py": ScriptCase(rules=("scheduler-step-frequency",)),
    "step_before_backward.py": ScriptCase(rules=("zero-grad-before-step",),
                                          allowed=("params-not-updated", "loss-plateau")),
}


def script_path(name: str) -> Path:
    return HERE / name
