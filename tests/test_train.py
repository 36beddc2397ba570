"""Training recipes: seeded, resumable, and the `train` command."""

from __future__ import annotations

import pytest
import torch

from invertkit.core.zoo.train import train_classifier
from invertkit.plugins.datasets.digits import Digits
from invertkit.plugins.targets.small_nets import small_cnn


def _data():
    x, y = Digits().load()
    m = y < 5
    x, y = x[m][:300], y[m][:300]
    return (x[:240], y[:240]), (x[240:], y[240:])


def _fresh() -> torch.nn.Module:
    torch.manual_seed(0)
    return small_cnn(5, (1, 8, 8), width=8, feat_dim=16)


def test_training_is_deterministic_and_an_interrupted_run_resumes_to_the_same_model(tmp_path) -> None:
    tr, te = _data()
    a = _fresh()
    train_classifier(a, tr, te, epochs=3, seed=3)
    b = _fresh()
    train_classifier(b, tr, te, epochs=3, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))

    class Interrupt(Exception):
        pass

    def stop_after_two(epoch: int, n: int, loss: float) -> None:
        if epoch == 2:
            raise Interrupt

    ckpt = tmp_path / "resume.pt"
    c = _fresh()
    with pytest.raises(Interrupt):
        train_classifier(c, tr, te, epochs=3, seed=3, checkpoint=ckpt, progress=stop_after_two)
    assert ckpt.is_file()
    d = _fresh()
    train_classifier(d, tr, te, epochs=3, seed=3, checkpoint=ckpt)
    assert not ckpt.exists()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), d.state_dict().values()))


def test_train_command_reports_accuracies_and_reuses_the_cache(tiny_registry, tiny_scenario) -> None:
    from click.testing import CliRunner

    from invertkit.cli import cli

    result = CliRunner().invoke(cli, ["train", "--preset", "digits-tiny", "--registry", str(tiny_registry)])
    assert result.exit_code == 0, result.output
    assert "target (small-cnn): test accuracy" in result.output and "prior (wgan-gp)" in result.output
    acc = float(result.output.split("test accuracy ")[1].split()[0])
    assert acc == pytest.approx(tiny_scenario.facts["target"]["test_acc"], abs=1e-4)  # printed to 4 places
    bad = CliRunner().invoke(cli, ["train", "--preset", "digitz-tiny", "--registry", str(tiny_registry)])
    assert bad.exit_code == 2 and "Did you mean 'digits-tiny'" in bad.stderr


def test_train_one_classifier_trains_only_that_one(tiny_registry, tiny_scenario) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from invertkit.cli import cli

    result = CliRunner().invoke(cli, ["train", "eval", "--preset", "digits-tiny", "--registry", str(tiny_registry)])
    assert result.exit_code == 0, result.output
    assert "digits-tiny eval (small-mlp): test accuracy" in result.output and "prior" not in result.output
    assert f"[key {tiny_scenario.keys['eval']}]" in result.output  # the same cached model as the scenario's
