"""The one checkpoint loader, for the torch and the NumPy RedNet: the forms PyTorch users have, safe reading,
check-then-write, short errors."""
import argparse
import pickle
import re
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from involution.reference.checkpoint import (load_checkpoint, load_npz, save_npz,  # noqa: E402
                                             state_dict_from_torch)
from involution.reference.rednet import RedNet as NumpyRedNet  # noqa: E402
from involution.torch import RedNet  # noqa: E402

TINY = dict(stage_blocks=(1, 1), stem_channels=16, base_channels=8, group_channels=4, kernel_size=3, num_classes=5)
FAMILIES = {"torch": lambda seed: RedNet(**TINY, seed=seed, backend="taps"),
            "numpy": lambda seed: NumpyRedNet(**TINY, seed=seed)}


def numpy_state(model) -> dict:
    """The state of either kind of model as NumPy arrays (copies)."""
    return {key: value.detach().numpy().copy() if torch.is_tensor(value) else np.array(value, copy=True)
            for key, value in model.state_dict().items()}


def trained_torch_state(seed=1):
    """A torch RedNet's state with non-default BN statistics, and the model."""
    model = RedNet(**TINY, seed=seed, backend="taps")
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 16, 16))
    return model.state_dict(), model


def assert_state_equal(model, state, what):
    loaded = numpy_state(model)
    for key, value in state.items():
        expected = value.float().numpy() if torch.is_tensor(value) else np.asarray(value)
        np.testing.assert_array_equal(loaded[key], expected.astype(loaded[key].dtype), err_msg=f"{what}: {key}")


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param


def test_openmmlab_file_with_numpy_scalars_in_meta(family, tmp_path):
    state, _ = trained_torch_state()
    meta = {"epoch": np.int64(100), "iter": np.int32(5), "best_score": np.float64(0.79), "lr": np.float32(0.1),
            "flag": np.bool_(True), "CLASSES": ("a", "b"), "mmcv_version": "1.3.0"}
    torch.save({"meta": meta, "state_dict": state, "optimizer": {"state": {}}}, tmp_path / "rednet.pth")
    model = FAMILIES[family](seed=0)
    report = load_checkpoint(model, tmp_path / "rednet.pth")
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert any("'state_dict' entry" in note for note in report.notes), report.notes
    assert_state_equal(model, state, family)


def test_model_entry_and_module_prefix_are_handled_with_notes(family, tmp_path):
    state, _ = trained_torch_state()
    wrapped = OrderedDict(("module." + key, value) for key, value in state.items())
    torch.save({"model": wrapped, "epoch": 3}, tmp_path / "ddp.pth")
    model = FAMILIES[family](seed=0)
    report = load_checkpoint(model, tmp_path / "ddp.pth")
    assert any("removed the prefix 'module.'" in note for note in report.notes), report.notes
    assert any("'model' entry" in note for note in report.notes), report.notes
    assert_state_equal(model, state, family)


def test_missing_num_batches_tracked_is_accepted_as_torch_does(family):
    state, _ = trained_torch_state()
    old = OrderedDict((key, value) for key, value in state.items() if not key.endswith("num_batches_tracked"))
    reference = RedNet(**TINY, seed=0, backend="taps")
    reference.load_state_dict(old)  # torch's own strict load accepts it
    model = FAMILIES[family](seed=0)
    before = numpy_state(model)
    report = load_checkpoint(model, old)
    assert any("num_batches_tracked" in note for note in report.notes), report.notes
    after = numpy_state(model)
    for key in state:
        if key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
            assert int(after[key]) == int(reference.state_dict()[key]), key
    assert_state_equal(model, old, family)


def test_backbone_only_state_gets_the_prefix(family):
    state, _ = trained_torch_state()
    backbone = OrderedDict((key.removeprefix("backbone."), value) for key, value in state.items()
                           if key.startswith("backbone."))
    model = FAMILIES[family](seed=0)
    with pytest.raises(ValueError, match=r"missing keys \(2\): head.fc.weight, head.fc.bias"):
        load_checkpoint(model, backbone)
    report = load_checkpoint(model, backbone, strict=False)
    assert report.missing_keys == ["head.fc.weight", "head.fc.bias"], report
    assert any("backbone-only" in note for note in report.notes), report.notes


def test_bfloat16_checkpoint_loads_exactly(family, tmp_path):
    state, _ = trained_torch_state()
    halved = OrderedDict((key, value.to(torch.bfloat16) if value.is_floating_point() else value)
                         for key, value in state.items())
    torch.save(halved, tmp_path / "bf16.pth")
    model = FAMILIES[family](seed=0)
    report = load_checkpoint(model, tmp_path / "bf16.pth")
    assert any("bfloat16" in note for note in report.notes), report.notes
    assert_state_equal(model, halved, family)
    assert state_dict_from_torch(tmp_path / "bf16.pth")["head.fc.weight"].dtype == np.float32


def test_bfloat16_torch_model_round_trip(tmp_path):
    state, _ = trained_torch_state()
    model = RedNet(**TINY, seed=0, backend="taps", dtype=torch.bfloat16)
    load_checkpoint(model, state)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key].to(value.dtype), rtol=0, atol=0, msg=key)


def test_unsafe_file_is_refused_unless_trusted(family, tmp_path):
    state, _ = trained_torch_state()
    torch.save({"meta": {"args": argparse.Namespace(lr=0.1)}, "state_dict": state}, tmp_path / "unsafe.pth")
    model = FAMILIES[family](seed=0)
    before = numpy_state(model)
    with pytest.raises(pickle.UnpicklingError, match=re.escape("it needs argparse.Namespace, which is not a tensor, "
                                                               "container or NumPy scalar. If you trust the file, "
                                                               "pass weights_only=False")):
        load_checkpoint(model, tmp_path / "unsafe.pth")
    assert_state_equal(model, before, "after a refused file")
    load_checkpoint(model, tmp_path / "unsafe.pth", weights_only=False)
    assert_state_equal(model, state, family)


def test_failed_load_writes_nothing(family):
    """One bad tensor late in the state: the load fails and every earlier tensor is still the model's own."""
    state, _ = trained_torch_state()
    model = FAMILIES[family](seed=0)
    before = numpy_state(model)
    keys = list(state)
    bad = dict(state)
    bad[keys[-3]] = torch.zeros(7)
    with pytest.raises(ValueError, match=re.escape(f"{keys[-3]}: expected shape")):
        load_checkpoint(model, bad)
    assert_state_equal(model, before, "after a failed load")
    if family == "numpy":
        with pytest.raises(ValueError):
            model.load_state_dict({key: value.numpy() for key, value in bad.items()})
        assert_state_equal(model, before, "after a failed load_state_dict")


def test_object_array_of_none_is_a_type_error_not_nan(family):
    model = FAMILIES[family](seed=0)
    state = numpy_state(model)
    before = numpy_state(model)
    state["head.fc.bias"] = np.array([None] * 5, dtype=object)
    with pytest.raises(TypeError, match=re.escape("head.fc.bias: dtype object, expected real numbers")):
        load_checkpoint(model, state)
    assert_state_equal(model, before, "after a refused object array")


def test_integer_buffer_refuses_fractions():
    model = NumpyRedNet(**TINY)
    state = model.state_dict()
    state["backbone.stem.0.bn.num_batches_tracked"] = np.float64(2.5)
    with pytest.raises(ValueError, match=re.escape("backbone.stem.0.bn.num_batches_tracked: expected whole numbers")):
        model.load_state_dict(state)


def test_npz_name_without_suffix_round_trips(family, tmp_path):
    source, target = FAMILIES[family](seed=1), FAMILIES[family](seed=0)
    if family == "numpy":
        written = save_npz(source, tmp_path / "weights")
        assert written == str(tmp_path / "weights.npz")
        load_npz(target, tmp_path / "weights")
    else:
        np.savez(tmp_path / "weights", **numpy_state(source))
    load_checkpoint(target, tmp_path / "weights")
    assert_state_equal(target, numpy_state(source), family)


def test_numpy_weights_load_into_the_torch_model(tmp_path):
    numpy_model = NumpyRedNet(**TINY, seed=4)
    save_npz(numpy_model, tmp_path / "numpy.npz")
    model = RedNet(**TINY, seed=0, backend="taps")
    load_checkpoint(model, tmp_path / "numpy.npz")
    assert_state_equal(model, numpy_model.state_dict(), "NumPy -> torch")


def test_file_holding_a_list_is_named(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(TypeError, match=re.escape(f"file '{tmp_path / 'list.pth'}' holds a list; expected a state "
                                                  "dict")):
        state_dict_from_torch(tmp_path / "list.pth")
    with pytest.raises(TypeError, match="holds a list"):
        load_checkpoint(RedNet(**TINY, backend="taps"), tmp_path / "list.pth")


def test_long_key_lists_are_summarised_with_a_hint(family):
    model = FAMILIES[family](seed=0)
    renamed = {"encoder." + key: value for key, value in numpy_state(model).items()}
    with pytest.raises(ValueError) as error:
        load_checkpoint(model, renamed)
    message = str(error.value)
    count = len(renamed)
    missing = sum(not key.endswith("num_batches_tracked") for key in renamed)  # torch's rule: counters may be absent
    assert f"missing keys ({missing}): backbone.stem.0.conv.weight" in message, message
    assert f"unexpected keys ({count}): encoder.backbone.stem.0.conv.weight" in message, message
    assert f"({count - 4} more)" in message and "hint: the given keys carry the prefix 'encoder.'" in message, message
    assert len(message) < 1000, f"{len(message)} characters: {message}"


def test_numpy_model_names_the_key_of_an_unreadable_tensor():
    model = NumpyRedNet(**TINY)
    state = {key: torch.from_numpy(np.array(value)) for key, value in model.state_dict().items()}
    state["head.fc.weight"] = state["head.fc.weight"].to(torch.bfloat16)
    with pytest.raises(TypeError, match=re.escape("head.fc.weight: Tensor is not readable as an array of real "
                                                  "numbers")):
        model.load_state_dict(state)
    report = load_checkpoint(model, state)  # the loader converts torch tensors (bfloat16 widened exactly)
    assert any("bfloat16" in note for note in report.notes), report.notes


def test_npz_needs_no_torch_and_other_sources_say_they_do(tmp_path, monkeypatch):
    import sys

    model = NumpyRedNet(**TINY, seed=2)
    save_npz(model, tmp_path / "weights.npz")
    monkeypatch.setitem(sys.modules, "torch", None)
    target = NumpyRedNet(**TINY)
    load_checkpoint(target, tmp_path / "weights.npz")
    assert_state_equal(target, model.state_dict(), "npz without torch")
    with pytest.raises(ImportError, match=re.escape("needs PyTorch (only .npz files do not)")):
        load_checkpoint(target, tmp_path / "weights.pth")
