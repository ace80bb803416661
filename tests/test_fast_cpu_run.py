"""The fast CPU backend's validated level, ``cpu.run``, its kernel table and its edges: arrays that do not match the
geometry, ``version=`` of another type, an empty batch (every pass, every version, every kernel called directly, the
torch op and a torch RedNet), at 5 and 16 channels per group (the narrowest channel-vector group and RedNet's)."""
import re

import numpy as np
import pytest

pytest.importorskip("numba")

from involution.fast import cpu  # noqa: E402
from involution.reference import involution2d, involution2d_backward  # noqa: E402

from cases import case_id, geometry_of, make_case  # noqa: E402

# Empty batches at 5 and 16 channels per group (the channel-vector kernels), 4 (the wide-row kernels), 3x3 and 7x7,
# stride 1 and 2.
EMPTY_BATCH_CASES = [
    (0, 5, 1, 6, 6, 3, 3, (1, 1), (1, 1), (1, 1)),
    (0, 10, 2, 9, 9, 7, 7, (2, 2), (3, 3), (1, 1)),
    (0, 32, 2, 9, 9, 7, 7, (1, 1), (3, 3), (1, 1)),
    (0, 32, 2, 12, 12, 3, 3, (2, 2), (1, 1), (1, 1)),
    (0, 8, 2, 7, 7, 3, 3, (1, 1), (1, 1), (1, 1)),
]
ONE_CASE = (1, 5, 1, 6, 6, 3, 3, (1, 1), (1, 1), (1, 1))


def _arrays(name, x, kernel, grad_out, geometry, dtype):
    """Pass ``name``'s inputs and a result array filled with NaN (so that an unwritten element shows)."""
    inputs = {"forward": (x, kernel), "grad_x": (grad_out, kernel), "grad_kernel": (grad_out, x)}[name]
    shape = {"forward": geometry.out_shape, "grad_x": geometry.x_shape, "grad_kernel": geometry.kernel_shape}[name]
    return (*inputs, np.full(shape, np.nan, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", EMPTY_BATCH_CASES[:3], ids=case_id)
def test_run_overwrites_the_result_and_returns_the_version(case, dtype):
    x, kernel, grad_out, *hyper = make_case((1, *case[1:]), dtype)
    geometry = geometry_of((1, *case[1:]))
    expected = {"forward": involution2d(x, kernel, *hyper)}
    expected["grad_x"], expected["grad_kernel"] = involution2d_backward(grad_out, x, kernel, *hyper)
    for name in cpu.KINDS:
        arrays = _arrays(name, x, kernel, grad_out, geometry, dtype)
        assert cpu.run(name, arrays, geometry) == cpu.choose_version(name, geometry)
        tolerance = 1e-4 if dtype == np.float32 else 1e-11  # a few dozen terms of unit magnitude
        np.testing.assert_allclose(arrays[-1], expected[name], rtol=tolerance, atol=tolerance,
                                   err_msg=f"{name}, case {case}")


def test_run_refuses_arrays_that_do_not_match_the_geometry():
    case = EMPTY_BATCH_CASES[2]
    x, kernel, grad_out, *_ = make_case((1, *case[1:]), np.float32)
    geometry = geometry_of((1, *case[1:]))
    out = np.empty(geometry.out_shape, np.float32)
    bad = {
        "arrays[2] of forward must be a C-contiguous float32 or float64 ndarray of shape (1, 32, 9, 9)":
            (x, kernel, out[:, :, :, :8]),
        "arrays[0] of forward must be a C-contiguous": (x.astype(np.float64), kernel, out),
        "arrays[1] of forward must be a C-contiguous": (x, np.asfortranarray(kernel), out),
        "arrays must be three ndarrays for forward (two inputs, then the result), got 2": (x, kernel),
    }
    for message, arrays in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            cpu.run("forward", arrays, geometry)
    with pytest.raises(ValueError, match=re.escape("kernel name must be one of")):
        cpu.run("backward", (x, kernel, out), geometry)


@pytest.mark.parametrize("version", [1.0, 8.0, "8", np.float32(2)], ids=repr)
def test_version_of_another_type_is_a_type_error_naming_it(version):
    x, kernel, grad_out, *hyper = make_case(ONE_CASE)
    message = f"version must be an int, one of {cpu.VERSIONS}, or None, got {type(version).__name__} {version!r}"
    with pytest.raises(TypeError, match=re.escape(message)):
        cpu.involution2d(x, kernel, *hyper, version=version)
    with pytest.raises(TypeError, match=re.escape(message)):
        cpu.involution2d_backward(grad_out, x, kernel, *hyper, version=version)
    assert cpu.check_version("forward", np.int64(2), geometry_of(ONE_CASE)) == 2  # NumPy ints are ints


def test_retired_version_5_is_refused_by_name():
    geometry = geometry_of(EMPTY_BATCH_CASES[2])
    with pytest.raises(ValueError, match=re.escape(f"version must be one of {cpu.VERSIONS} or None, got 5")):
        cpu.check_version("forward", 5, geometry)
    assert 5 not in cpu.VERSIONS and set(cpu.VERSIONS) == {1, 2, 3, 4, 6, 7, 8, 9}


@pytest.mark.parametrize("version", cpu.VERSIONS)
@pytest.mark.parametrize("case", EMPTY_BATCH_CASES, ids=case_id)
def test_empty_batch_gives_empty_results_in_every_version(case, version):
    """The front doors, and each pass's kernel called directly (below run's check): the channel-vector kernels split
    work units by batch x groups, which an empty batch made a ZeroDivisionError."""
    x, kernel, grad_out, *hyper = make_case(case, np.float32)
    geometry = geometry_of(case)
    out = cpu.involution2d(x, kernel, *hyper, version=version)
    grad_x, grad_kernel = cpu.involution2d_backward(grad_out, x, kernel, *hyper, version=version)
    for name, got, shape in (("out", out, geometry.out_shape), ("grad_x", grad_x, geometry.x_shape),
                             ("grad_kernel", grad_kernel, geometry.kernel_shape)):
        assert got.shape == shape and got.dtype == np.float32, f"{name}: {got.shape} {got.dtype}, case {case}"
    for name, kernel_code in zip(cpu.KINDS, cpu.KERNELS[version]):
        arrays = _arrays(name, x, kernel, grad_out, geometry, np.float32)
        kernel_code.run(*arrays, *geometry.stride, *geometry.padding, *geometry.dilation)


@pytest.mark.parametrize("case", EMPTY_BATCH_CASES[:3], ids=case_id)
def test_empty_batch_through_the_torch_op(case):
    torch = pytest.importorskip("torch")
    from involution.torch import ops

    x, kernel, _, *hyper = make_case(case)
    x, kernel = (torch.from_numpy(array).requires_grad_() for array in (x, kernel))
    out = ops.involution2d(x, kernel, *hyper)
    assert out.shape == geometry_of(case).out_shape
    out.sum().backward()
    assert x.grad.shape == x.shape and kernel.grad.shape == kernel.shape


def test_empty_batch_through_a_torch_rednet():
    torch = pytest.importorskip("torch")
    from involution.torch import RedNet

    model = RedNet(26, num_classes=10, stem_channels=32, base_channels=16, backend="fast").eval()
    x = torch.zeros((0, 3, 32, 32), requires_grad=True)
    scores = model(x)
    assert scores.shape == (0, 10), scores.shape
    scores.sum().backward()
    assert x.grad.shape == x.shape
