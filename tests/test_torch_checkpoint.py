"""The one checkpoint loader, for the torch and the NumPy RedNet: the forms PyTorch users have, safe reading,
check-then-write, short errors."""
import argparse
import zipfile
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


# --- hostile files: judged by their headers before their data is read ---------------------------------------
BOMB_BYTES = 2 * 2**30  # one member that inflates to 2 GiB of float32 zeros; about 2 MB compressed


def write_npz_with_member(path, state: dict, key: str, shape: tuple, data_bytes: int):
    """``state`` as ``.npz`` members plus ``key``: a deflated member whose header says float32 ``shape``, followed by
    ``data_bytes`` zero bytes (fewer than the shape needs: a truncated member)."""
    chunk = bytes(min(2**24, data_bytes))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, value in state.items():
            with archive.open(name + ".npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
        with archive.open(key + ".npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": shape})
            for _ in range(data_bytes // max(len(chunk), 1)):
                member.write(chunk)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A complete state of the NumPy TINY RedNet plus the unknown key ``bomb``: 2 GiB of float32 zeros, about 2 MB
    compressed (deflating it takes some 20 s)."""
    state = NumpyRedNet(**TINY, seed=5).state_dict()
    return write_npz_with_member(tmp_path_factory.mktemp("bomb") / "bomb.npz", state, "bomb", (BOMB_BYTES // 4,),
                                 BOMB_BYTES)


PEAK_SCRIPT = """
import resource, sys
from involution.reference.checkpoint import load_checkpoint
from involution.reference.rednet import RedNet
model = RedNet(stage_blocks=(1, 1), stem_channels=16, base_channels=8, group_channels=4, kernel_size=3, num_classes=5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_checkpoint(model, sys.argv[1], strict=sys.argv[2] == "strict")
    print("loaded")
except ValueError as error:
    print("refused:", str(error).replace(chr(10), " "))
print("peak growth KiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.parametrize("strict, outcome", [("strict", "refused: state dict does not fit RedNet"),
                                             ("non-strict", "loaded")])
def test_npz_bomb_is_judged_by_its_headers_with_under_100_mb_of_memory(bomb, strict, outcome):
    import subprocess
    import sys

    assert bomb.stat().st_size < 4 * 2**20, bomb.stat().st_size
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(bomb), strict], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(outcome), lines
    if outcome != "loaded":
        assert "unexpected keys (1): bomb" in lines[0], lines
    growth_kib = int(lines[-1].split()[-1])  # Linux: ru_maxrss in KiB
    assert growth_kib < 100 * 1024, f"peak memory grew by {growth_kib / 1024:.0f} MiB ({strict}): {lines}"


def test_npz_member_is_refused_for_the_shape_its_header_says(family, tmp_path):
    """A header that claims 2 GiB (the data is absent): refused by the header, naming the key and both shapes."""
    model = FAMILIES[family](seed=0)
    state = numpy_state(model)
    del state["head.fc.weight"]
    path = write_npz_with_member(tmp_path / "claims.npz", state, "head.fc.weight", (BOMB_BYTES // 4,), 0)
    with pytest.raises(ValueError, match=re.escape(f"head.fc.weight: expected shape (5, 64), got "
                                                   f"({BOMB_BYTES // 4},)")):
        load_checkpoint(model, path)


@pytest.mark.parametrize("content, suffix, reason", [
    (b"", ".pth", "not a torch checkpoint, or is truncated (EOFError"),
    (b"root:x:0:0:root:/root:/bin/bash\n", ".pth", "not a torch checkpoint, or is truncated"),
    ("half of a torch file", ".pth", "not a torch checkpoint, or is truncated ("),
    (b"", ".npz", "is not a .npz file of arrays, or is truncated"),
    (b"root:x:0:0:root:/root:/bin/bash\n", ".npz", "is not a .npz file of arrays, or is truncated"),
    ("half of an npz", ".npz", "is not a .npz file of arrays, or is truncated"),
], ids=["empty.pth", "passwd.pth", "truncated.pth", "empty.npz", "passwd.npz", "truncated.npz"])
def test_empty_foreign_or_truncated_files_get_one_line_naming_the_file(family, tmp_path, content, suffix, reason):
    model = FAMILIES[family](seed=0)
    if content == "half of a torch file":
        torch.save(model.state_dict(), tmp_path / "whole.pth")
        content = (tmp_path / "whole.pth").read_bytes()[: (tmp_path / "whole.pth").stat().st_size // 2]
    elif content == "half of an npz":
        np.savez(tmp_path / "whole.npz", **numpy_state(model))
        content = (tmp_path / "whole.npz").read_bytes()[: (tmp_path / "whole.npz").stat().st_size // 2]
    path = tmp_path / ("bad" + suffix)
    path.write_bytes(content)
    before = numpy_state(model)
    with pytest.raises(ValueError) as error:
        load_checkpoint(model, path)
    message = str(error.value)
    assert message.startswith(repr(str(path))) and reason in message and "\n" not in message, message
    assert_state_equal(model, before, "after a refused file")


def test_npz_member_of_the_wrong_dtype_is_refused_before_its_data_is_read(tmp_path):
    model = NumpyRedNet(**TINY, seed=0)
    state = dict(model.state_dict())
    state["head.fc.bias"] = np.array(["a", "b", "c", "d", "e"])
    np.savez(tmp_path / "strings.npz", **state)
    with pytest.raises(TypeError, match=re.escape("head.fc.bias: dtype <U1, expected real numbers")):
        load_checkpoint(model, tmp_path / "strings.npz")
