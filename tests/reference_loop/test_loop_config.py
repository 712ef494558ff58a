import json

import pytest

from reference_loop.config import TrainConfig
from reference_loop.injections import INJECTIONS


def test_defaults_are_valid_and_json_ready():
    cfg = TrainConfig()
    assert cfg.task == "images" and cfg.amp == "auto" and cfg.inject == []
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["betas"] == [0.9, 0.99]


@pytest.mark.parametrize("field, value, words", [
    ("task", "audio", "task must be one of"),
    ("optimizer", "adam", "optimizer must be one of"),
    ("scheduler", "linear", "scheduler must be one of"),
    ("amp", "fp8", "amp must be one of"),
    ("device", "tpu", "device must be one of"),
    ("batch_size", 0, "batch_size must be >= 1"),
    ("accum_steps", 0, "accum_steps must be >= 1"),
    ("epochs", 0, "epochs must be >= 1"),
    ("max_steps", 0, "max_steps must be >= 1"),
    ("lr", 0.0, "lr must be > 0"),
    ("lr", float("nan"), "lr must be > 0"),
    ("grad_clip", -1.0, "grad_clip must be >= 0"),
    ("dropout", 1.0, "dropout must be in [0, 1)"),
    ("ema_decay", 1.0, "ema_decay must be in [0, 1)"),
    ("betas", (0.9,), "betas must be two numbers"),
    ("n_head", 3, "must be divisible by n_head"),
    ("keep_last", 0, "keep_last must be >= 1"),
    ("gamma", 0.0, "gamma must be in (0, 1]"),
    ("resume", "/nonexistent/ckpt.pt", "is not a file"),
    ("inject", ["no-such-bug"], "unknown injection 'no-such-bug'; valid:"),
])
def test_invalid_values_raise_one_line(field, value, words):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{field: value})
    message = str(info.value)
    assert words in message
    assert "\n" not in message


def test_unknown_injection_lists_every_valid_name():
    with pytest.raises(ValueError) as info:
        TrainConfig(inject=["memory-leek"])
    for name in INJECTIONS:
        assert name in str(info.value)


def test_injection_aliases_and_duplicates_resolve():
    assert TrainConfig(inject=["tiny-lr", "loss-plateau"]).inject == ["loss-plateau"]


def test_forced_settings_are_in_the_config_and_idempotent():
    cfg = TrainConfig(amp="bf16", grad_clip=0.0, scheduler="step", inject=["clip-before-unscale"])
    assert (cfg.amp, cfg.grad_clip) == ("fp16", 1.0)
    assert TrainConfig(scheduler="cosine", inject=["scheduler-before-optimizer"]).scheduler == "onecycle"
    assert TrainConfig(scheduler="warmup-cosine", inject=["scheduler-before-optimizer"]).scheduler == "warmup-cosine"
    boom = TrainConfig(inject=["gradient-explosion"])
    again = boom.replace(epochs=3)  # validated again: forces must not compound
    assert (again.optimizer, again.lr) == ("sgd", boom.lr)
    assert again.to_dict()["lr"] == boom.lr


def test_injection_for_another_task_is_refused():
    with pytest.raises(ValueError, match="needs task images"):
        TrainConfig(task="chars", inject=["nonfinite-inputs"])


def test_from_toml_roundtrip_and_unknown_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('task = "chars"\nlr = 1e-3\nbetas = [0.8, 0.95]\ninject = ["memory-leak"]\n')
    cfg = TrainConfig.from_toml(path)
    assert (cfg.task, cfg.lr, cfg.betas, cfg.inject) == ("chars", 1e-3, (0.8, 0.95), ["memory-leak"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    path.write_text("learning_rate = 1e-3\n")
    with pytest.raises(ValueError, match="unknown config key.*learning_rate"):
        TrainConfig.from_toml(path)


def test_every_field_has_a_docstring():
    import ast
    import inspect

    import reference_loop.config as module

    tree = ast.parse(inspect.getsource(module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainConfig")
    body = cls.body
    fields = [n.target.id for n in body if isinstance(n, ast.AnnAssign)]
    documented = {body[i].target.id for i in range(len(body) - 1)
                  if isinstance(body[i], ast.AnnAssign) and isinstance(body[i + 1], ast.Expr)
                  and isinstance(body[i + 1].value, ast.Constant)}
    assert fields and set(fields) == documented
