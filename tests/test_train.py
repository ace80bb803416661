"""SGD against torch.optim.SGD, and a short digits training run that must really learn."""
import numpy as np
import pytest

from involution.cli import main
from involution.reference.checkpoint import load_npz
from involution.reference.module import Parameter
from involution.reference.optim import SGD
from involution.reference.train import accuracy, load_digits_split, tiny_rednet, train_digits


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-2)])
def test_sgd_matches_torch(momentum, weight_decay):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4))
    ours = Parameter(start.copy())
    theirs = torch.nn.Parameter(torch.tensor(start))
    optimizer = SGD([ours], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    reference = torch.optim.SGD([theirs], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for step in range(4):
        grad = rng.standard_normal((3, 4))
        ours.grad, theirs.grad = grad, torch.tensor(grad)
        optimizer.step()
        reference.step()
        np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-14, atol=1e-15,
                                   err_msg=f"step {step}, momentum {momentum}, weight decay {weight_decay}")


def test_sgd_skips_parameters_without_gradient_and_rejects_bad_options():
    frozen = Parameter(np.ones(2))
    SGD([frozen], lr=0.1).step()
    np.testing.assert_array_equal(frozen.data, np.ones(2))
    for options in (dict(lr=0.0), dict(lr=float("nan")), dict(lr=0.1, momentum=float("nan")),
                    dict(lr=0.1, weight_decay=float("inf"))):
        with pytest.raises(ValueError, match="need lr > 0, momentum >= 0, weight_decay >= 0, all finite"):
            SGD([frozen], **options)


def test_digits_split_is_fixed_and_scaled():
    x_train, y_train, x_test, y_test = load_digits_split(16)
    assert x_train.shape == (1347, 1, 16, 16) and x_test.shape == (450, 1, 16, 16) and x_train.dtype == np.float32
    assert set(np.unique(y_test)) == set(range(10))
    assert abs(x_train.mean()) < 1e-5 and abs(x_train.std() - 1) < 1e-5
    # Pixel repetition: every 2x2 block of a 16x16 image is constant.
    np.testing.assert_array_equal(x_train[:, :, ::2, ::2], x_train[:, :, 1::2, 1::2])
    np.testing.assert_array_equal(load_digits_split(16)[3], y_test)
    with pytest.raises(ValueError, match=r"size must be one of \(16, 32\), got 20"):
        load_digits_split(20)


def test_short_training_learns_and_saves_weights(tmp_path):
    x_train, y_train, x_test, y_test = load_digits_split(16)
    before = accuracy(tiny_rednet(), x_test, y_test)
    history = train_digits(epochs=3, progress=False, out=tmp_path / "digits.npz", log=lambda line: None)
    assert history["epoch"] == [1, 2, 3]
    assert history["loss"][-1] < 0.6 * history["loss"][0], history["loss"]
    # Chance is 10%; three epochs reach ~80% (eight reach ~97%, see `involution train-digits`).
    assert history["test_accuracy"][-1] > 0.6 > before + 0.3, (before, history["test_accuracy"])
    reloaded = tiny_rednet(seed=5)
    load_npz(reloaded, tmp_path / "digits.npz")
    assert accuracy(reloaded, x_test, y_test) == history["test_accuracy"][-1]


def test_cli_trains_and_reports(tmp_path, capsys):
    code = main(["train-digits", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "w.npz")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "epoch 1/1: train loss" in printed and "final test accuracy" in printed, printed
    assert (tmp_path / "w.npz").exists()


def test_cli_rejects_bad_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-digits", "--epochs", "0", "--no-progress"])
    assert exit_info.value.code == 2
    assert "argument --epochs: expected an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("options, error, message", [
    (dict(epochs=0), ValueError, "epochs must be >= 1, got 0"),
    (dict(epochs=2.0), TypeError, "epochs must be an int, got float 2.0"),
    (dict(batch_size=1), ValueError, "batch_size must be >= 2, got 1"),
    (dict(batch_size=1348), ValueError, r"batch_size \(1348\) must be at most the 1347 training images"),
    (dict(lr=float("nan")), ValueError, "lr must be a finite number > 0, got nan"),
    (dict(lr=-0.1), ValueError, "lr must be a finite number > 0, got -0.1"),
    (dict(lr="0.1"), ValueError, "lr must be a finite number > 0, got '0.1'"),
    (dict(out="no-such-folder/w.npz"), ValueError, "out: folder 'no-such-folder' does not exist"),
])
def test_train_digits_checks_everything_before_training(options, error, message):
    lines = []
    with pytest.raises(error, match=message):
        train_digits(progress=False, log=lines.append, **options)
    assert lines == [], f"training started before the check: {lines}"


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_diverging_training_raises_floating_point_error():
    lines = []
    with pytest.raises(FloatingPointError, match=r"training diverged: the loss is (nan|inf) at epoch 1, step \d+"):
        train_digits(epochs=1, lr=1e30, progress=False, log=lines.append)
    assert lines == [], "no epoch may be reported with a non-finite loss"
