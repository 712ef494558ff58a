import io

from rich.console import Console

from reference_loop.progress import StepProgress
from reference_loop.train import train


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    with StepProgress(10, file=out, every=4) as bar:
        assert bar.plain  # a StringIO is not a terminal
        for step in range(1, 11):
            bar.update(step, samples=32, loss=1.0 / step if step % 4 == 0 else None)
        bar.print("epoch 0: done")
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines[:3]] == ["4/10", "8/10", "10/10"]
    assert "loss 0.2500" in lines[0] and "samples/s" in lines[0] and "eta" in lines[0]
    assert "loss 0.1250" in lines[2]  # the last known loss is repeated, not a fresh sync
    assert lines[3] == "epoch 0: done"


def test_rich_bar_on_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with StepProgress(5, console=console) as bar:
        assert not bar.plain
        for step in range(1, 6):
            bar.update(step, samples=8, loss=0.5)
    text = out.getvalue()
    assert "5/5" in text and "loss 0.5000" in text and "samples/s" in text


def test_disabled_prints_nothing():
    out = io.StringIO()
    with StepProgress(5, file=out, enabled=False) as bar:
        bar.update(5, samples=1, loss=1.0)
        bar.print("x")
    assert out.getvalue() == ""


def test_resumed_bar_starts_at_the_resumed_step():
    out = io.StringIO()
    with StepProgress(10, file=out, every=1, start_step=6) as bar:
        bar.update(7, samples=1)
    assert out.getvalue().startswith("train step 7/10")


def test_train_prints_plain_progress_and_epoch_lines(tmp_path, tiny):
    out = io.StringIO()
    train(tiny(epochs=1, log_every=4), tmp_path, progress=True, progress_file=out)
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines[:2]] == ["4/8", "8/8"]
    assert lines[2].startswith("epoch 0: train_loss ") and "val_acc" in lines[2]
