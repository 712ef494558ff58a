"""The forward hooks narrow to the models' classes once the models are known, and widen
again whenever a new model may appear (diagnose/zerocode/modules.py, "Narrowing")."""
from __future__ import annotations

import torch

from tests.zerocode.test_discovery import _run

GLOBAL_HOOKS = """
        import torch.nn.modules.module as module_mod
        def global_hooks():
            return len(module_mod._global_forward_pre_hooks) + len(module_mod._global_forward_hooks)
        def step(model, opt, n=4):
            opt.zero_grad(); model(torch.randn(2, n)).sum().backward(); opt.step()
"""


def test_hooks_move_from_global_to_the_models_class_and_back(tmp_path):
    run = _run(tmp_path, GLOBAL_HOOKS + """
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        assert global_hooks() == 2 and "__call__" not in vars(nn.Sequential)
        step(model, opt)
        assert global_hooks() == 0 and "__call__" in vars(nn.Sequential)
        assert not model._forward_hooks and not model._forward_pre_hooks  # nothing on the instance
        ema = copy.deepcopy(model)            # an EMA copy: same class, not the model
        pickle.loads(pickle.dumps(model))
        for _ in range(2):
            step(model, opt)
            with torch.no_grad():
                ema(torch.randn(2, 4))
        model.eval()
        with torch.no_grad():
            model(torch.randn(2, 4))
    """)
    assert "__call__" not in vars(torch.nn.Sequential)  # undone at the end
    assert len(run.objects["models"]) == 1
    assert run.calls.count("model0.forward[TGB]") == 3
    assert run.calls[-2:] == ["model0.eval", "model0.forward[EN]"]


def test_new_model_per_fold_widens_then_narrows_again(tmp_path):
    run = _run(tmp_path, GLOBAL_HOOKS + """
        seen = []
        for fold in range(3):
            model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            seen.append(global_hooks())        # wide again: the new model must be seen
            for _ in range(2):
                step(model, opt)
            seen.append(global_hooks())
        assert seen[1:] == [0, 2, 0, 2, 0], seen
    """)
    assert len(run.objects["models"]) == 3
    by_step = [calls for _, calls in sorted(run.calls_by_step().items())]
    assert [calls[1] for calls in by_step] == \
        [f"model{fold}.forward[TGB]" for fold in range(3) for _ in range(2)]


def test_compiling_widens_for_good(tmp_path):
    run = _run(tmp_path, GLOBAL_HOOKS + """
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        step(model, opt)
        assert global_hooks() == 0
        fast = torch.compile(model, backend="eager")
        assert global_hooks() == 2 and "__call__" not in vars(nn.Sequential)
        for _ in range(3):
            step(fast, opt)
        assert global_hooks() == 2
    """)
    assert run.calls.count("model0.forward[TGB]") == 4


def test_own_call_override_and_an_exception_inside_forward(tmp_path):
    run = _run(tmp_path, GLOBAL_HOOKS + """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Linear(4, 1)
                self.calls = 0
            def __call__(self, *args, **kwargs):   # a user override, called through super()
                self.calls += 1
                return super().__call__(*args, **kwargs)
            def forward(self, x):
                if x.shape[0] == 3:
                    raise ValueError("bad batch")
                return self.body(x)
        own_call = Net.__call__
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        step(model, opt)
        assert Net.__call__ is not own_call       # wrapped on the class while narrowed
        try:
            model(torch.randn(3, 4))
        except ValueError:
            pass
        for _ in range(2):
            step(model, opt)
        assert model.calls == 4
    """)
    assert run.calls.count("model0.forward[TGB]") == 3  # the depth did not skew
