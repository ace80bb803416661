"""Issue 14, point 4: the command line validates before working, reports on stderr and exits non-zero.

Bad options are argparse errors (``involution COMMAND: error: argument --NAME: ...``, exit 2, no traceback);
options the data set decides (a batch larger than it) fail before training with exit 2; a run whose loss stops
being finite fails with exit 1 and a message on stderr.
"""
import argparse
import os
import re

import pytest

from involution.cli import main
from involution import arguments


@pytest.mark.parametrize("argv, message", [
    (["demo", "--seed", "-1"], r"argument --seed: expected an integer >= 0 and <= 4294967295, got -1"),
    (["demo", "--seed", "2.5"], r"argument --seed: expected an integer, got '2.5'"),
    (["demo", "--max-examples", "0"], r"argument --max-examples: expected an integer >= 1, got 0"),
    (["train-digits", "--lr", "nan"], r"argument --lr: expected a finite number > 0, got nan"),
    (["train-digits", "--lr", "inf"], r"argument --lr: expected a finite number > 0, got inf"),
    (["train-digits", "--lr", "0"], r"argument --lr: expected a finite number > 0, got 0"),
    (["train-digits", "--lr", "fast"], r"argument --lr: expected a number, got 'fast'"),
    (["train-digits", "--epochs", "0"], r"argument --epochs: expected an integer >= 1, got 0"),
    (["train-digits", "--batch-size", "1"], r"argument --batch-size: expected an integer >= 2, got 1"),
    (["train-digits", "--seed", "-3"], r"argument --seed: expected an integer >= 0"),
    (["train-digits", "--seed", "4294967296"], r"argument --seed: expected an integer >= 0 and <= 4294967295"),
    (["train-digits", "--out", "no-such-folder/w.npz"],
     r"argument --out: folder 'no-such-folder' of 'no-such-folder/w.npz' does not exist"),
    (["bench", "--threads", "100"], rf"argument --threads: expected an integer >= 1 and <= {os.cpu_count()}, got 100"),
    (["bench", "--threads", "-1"], r"argument --threads: expected an integer >= 1 and <= \d+, got -1"),
    (["bench", "--threads", "0"], r"argument --threads: expected an integer >= 1 and <= \d+, got 0"),
    (["bench", "--backend", "fast-cuda", "--plan", "--batch", "0"], r"argument --batch: expected an integer >= 1, got 0"),
    (["bench", "--repeats", "0"], r"argument --repeats: expected an integer >= 1, got 0"),
    (["bench", "--layers", "8"], r"argument --layers: expected an integer >= 0 and <= 7, got 8"),
    (["bench", "--backend", "cuda"], r"argument --backend: invalid choice: 'cuda'"),
    (["bench", "--json", "no-such-folder/b.json"], r"argument --json: folder 'no-such-folder'"),
    (["complexity", "faster_rcnn", "--stem-kernel-size", "0"],
     r"argument --stem-kernel-size: expected an integer >= 1, got 0"),
    (["complexity", "--depth-list", ""], r"argument --depth-list: expected comma-separated integers, got ''"),
    (["complexity", "--depth-list", "26,,50"], r"argument --depth-list: expected comma-separated integers"),
    (["complexity", "--depth-list", "26,x"], r"argument --depth-list: expected an integer, got 'x'"),
    (["complexity", "--input-size", "224,0"], r"argument --input-size: expected an integer >= 1, got 0"),
    (["complexity", "--input-size", "1,2,3"], r"argument --input-size: expected 1 or 2 comma-separated integers"),
    (["complexity", "--kernel-size", "0"], r"argument --kernel-size: expected an integer >= 1, got 0"),
    (["complexity", "--reduction", "-4"], r"argument --reduction: expected an integer >= 1, got -4"),
    (["complexity", "--num-classes", "0"], r"argument --num-classes: expected an integer >= 1, got 0"),
    (["complexity", "--group-channels", "0"], r"argument --group-channels: expected an integer >= 1, got 0 \(or 'all'\)"),
])
def test_bad_options_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured
    assert f"involution {argv[0]}: error:" in captured.err, captured.err
    assert re.search(message, captured.err), f"{message!r} not in stderr:\n{captured.err}"
    assert captured.out == "", f"nothing may run before the check; stdout:\n{captured.out}"


def test_out_that_is_a_folder_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train-digits", "--out", str(tmp_path)])
    assert f"argument --out: {str(tmp_path)!r} is a folder, expected a file path" in capsys.readouterr().err


def test_batch_larger_than_the_data_set_fails_before_training(capsys):
    code = main(["train-digits", "--batch-size", "5000", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert ("involution train-digits: error: batch_size (5000) must be at most the 1347 training images"
            in captured.err), captured.err
    assert "epoch" not in captured.out and "nan" not in captured.out, captured.out


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_diverging_training_exits_1_with_a_message_on_stderr(tmp_path, capsys):
    weights = tmp_path / "w.npz"
    code = main(["train-digits", "--lr", "1e30", "--epochs", "1", "--no-progress", "--out", str(weights)])
    captured = capsys.readouterr()
    assert code == 1, captured
    assert "involution train-digits: error: training diverged: the loss is" in captured.err, captured.err
    assert "final test accuracy" not in captured.out, captured.out
    assert not weights.exists(), "a diverged model must not be saved"


@pytest.mark.parametrize("convert, text, expected", [
    (arguments.positive_int, "7", 7),
    (arguments.int_at_least(2), "2", 2),
    (arguments.seed, "4294967295", 2**32 - 1),
    (arguments.positive_float, "1e-3", 1e-3),
])
def test_types_return_the_value(convert, text, expected):
    assert convert(text) == expected


@pytest.mark.parametrize("convert, text, message", [
    (arguments.positive_int, "1.0", "expected an integer, got '1.0'"),
    (arguments.positive_int, "", "expected an integer, got ''"),
    (arguments.int_at_least(2, 4), "5", "expected an integer >= 2 and <= 4, got 5"),
    (arguments.positive_float, "-inf", "expected a finite number > 0, got -inf"),
    (arguments.positive_float, "-1", "expected a finite number > 0, got -1"),
])
def test_types_reject_with_a_message(convert, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        convert(text)
