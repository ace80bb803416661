"""The rules of involution/spec.py and the registry of involution/backends.py, each with the exact error it gives."""
import numpy as np
import pytest

from involution import backends, involution2d, involution2d_backward
from involution.spec import MAX_EXTENT, check_geometry, check_int, is_integer, output_size, pair, same_padding


@pytest.mark.parametrize("value, error, message", [
    (2.0, TypeError, "channels must be an int, got float 2.0"),
    ((2, 2), TypeError, r"channels must be an int, got tuple \(2, 2\)"),
    (True, TypeError, "channels must be an int, got True"),
    (0, ValueError, "channels must be >= 1, got 0"),
    (MAX_EXTENT + 1, ValueError, f"channels must be <= {MAX_EXTENT}, got {MAX_EXTENT + 1}"),
])
def test_check_int_never_truncates(value, error, message):
    with pytest.raises(error, match=message):
        check_int(value, "channels", minimum=1)


def test_check_int_takes_numpy_integers():
    assert check_int(np.int64(3), "stride", minimum=1) == 3 and type(check_int(np.int64(3), "stride", minimum=1)) is int


@pytest.mark.parametrize("value, error, message", [
    ((1, 2, 3), ValueError, r"stride must be an int or an \(h, w\) pair, got \(1, 2, 3\)"),
    ((1,), ValueError, r"stride must be an int or an \(h, w\) pair, got \(1,\)"),
    ((1, 1.5), TypeError, r"stride must be an int or an \(h, w\) pair of ints, got \(1, 1.5\)"),
    ((1, False), TypeError, "pair of ints"),
    ((1, 0), ValueError, r"stride must be >= 1, got \(1, 0\)"),
    ((1, 2**40), ValueError, f"stride must be <= {MAX_EXTENT}"),
])
def test_pair_rejects_what_it_cannot_take_whole(value, error, message):
    with pytest.raises(error, match=message):
        pair(value, "stride", minimum=1)


def test_pair_keeps_both_entries():
    assert pair((3, 5), "kernel_size", minimum=1) == (3, 5)
    assert pair(np.array([2, 1]).tolist(), "stride", minimum=1) == (2, 1)


@pytest.mark.parametrize("args, expected", [
    ((224, 7, 1, 3, 1), 224), ((224, 7, 2, 3, 1), 112), ((15, 7, 2, 3, 1), 8), ((5, 3, 1, 0, 3), -1),
    ((0, 1, 1, 0, 1), 0),
])
def test_output_size_rule(args, expected):
    size, kernel, stride, padding, dilation = args
    assert output_size(*args) == expected == (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@pytest.mark.parametrize("args, error, message", [
    ((10, 3, 0, 1, 1), ValueError, "stride must be >= 1, got 0"),
    ((10, 3, -1, 1, 1), ValueError, "stride must be >= 1, got -1"),
    ((10, 3, 1, -1, 1), ValueError, "padding must be >= 0, got -1"),
    ((10, 3, 1, 1, 0), ValueError, "dilation must be >= 1, got 0"),
    ((10, 3.0, 1, 1, 1), TypeError, "kernel must be an int"),
])
def test_output_size_checks_its_arguments(args, error, message):
    with pytest.raises(error, match=message):
        output_size(*args)


def test_same_padding_keeps_the_size_at_stride_one():
    for kernel_h, kernel_w, dilation in [(3, 3, 1), (7, 7, 1), (3, 5, 2), (1, 7, 3)]:
        padding = same_padding((kernel_h, kernel_w), dilation)
        assert padding == (dilation * (kernel_h - 1) // 2, dilation * (kernel_w - 1) // 2)
        for size, kernel, pad in zip((9, 10), (kernel_h, kernel_w), padding):
            assert output_size(size, kernel, 1, pad, dilation) == size


def test_geometry_triple_and_extent_rule():
    geometry = check_geometry((1, 4, 6, 6), (1, 2, 3, 3, 3, 6), (2, 1), (1, 1), (1, 1))
    assert geometry.hyper_parameters == ((2, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=f"padded x height \\(size \\+ 2\\*padding = {4 + 2 * 2**30}\\) must be <= "):
        check_geometry((1, 1, 4, 4), (1, 1, 1, 1, 4 + 2**31, 4), 1, (2**30, 0), 1)


def test_geometry_takes_integer_shapes_only():
    """Array shapes are ints; a shape given by hand (``check_geometry`` is public) is checked entry by entry."""
    assert check_geometry((1, 4, np.int64(6), 6), (1, 2, 3, 3, 4, 4), 1, 0, 1).out_shape == (1, 4, 4, 4)
    with pytest.raises(TypeError, match="x shape entry must be an int, got float 6.0"):
        check_geometry((1, 4, 6.0, 6), (1, 2, 3, 3, 4, 4), 1, 0, 1)
    with pytest.raises(TypeError, match="kernel shape entry must be an int, got True"):
        check_geometry((1, 4, 6, 6), (1, 2, True, 3, 4, 4), 1, 0, 1)


class SymbolicSize:
    """An integer whose value must not be asked for, as torch's symbolic batch size under ``torch.export``
    (``operator.index`` would specialise it to a constant); it can only be compared."""

    def __index__(self):
        raise AssertionError("check_geometry asked for the value of a symbolic batch size")

    def __lt__(self, other):
        return False


def test_geometry_leaves_a_symbolic_batch_symbolic():
    batch = SymbolicSize()
    geometry = check_geometry((batch, 4, 6, 6), (batch, 2, 3, 3, 4, 4), 1, 0, 1)
    assert geometry.batch is batch and geometry.out_shape[1:] == (4, 4, 4), geometry


@pytest.mark.parametrize("entry", [int, np.int64], ids=["int", "np.int64"])
def test_geometry_sizes_follow_the_same_rules_whatever_the_integer_type(entry):
    assert check_geometry((1, entry(2**32), 6, 6), (1, 2, 3, 3, 4, 4), 1, 0, 1).channels == 2**32
    with pytest.raises(ValueError, match=r"padded x height \(size \+ 2\*padding = 2147483648\)"):
        check_geometry((1, 4, entry(2**31), 6), (1, 2, 3, 3, 2**31 - 2, 4), 1, 0, 1)
    with pytest.raises(ValueError, match="must be >= 0"):
        check_geometry((entry(-1), 4, 6, 6), (-1, 2, 3, 3, 4, 4), 1, 0, 1)


def test_registry_vocabulary():
    assert backends.names("numpy") == ("reference", "fast-cpu", "fast-cuda")
    assert backends.names("torch") == ("fast", "taps")
    with pytest.raises(ValueError, match=r"backend must be a numpy backend, one of \('reference', 'fast-cpu', "
                                         r"'fast-cuda'\), got 'numpy'"):
        backends.get("numpy", "numpy")
    with pytest.raises(ValueError, match=r"framework must be one of \('numpy', 'torch'\), got 'jax'"):
        backends.names("jax")


@pytest.mark.parametrize("backend", backends.names("numpy"))
def test_empty_batch_gives_empty_results_on_every_numpy_backend(backend):
    """Policy (docs/spec.md): B = 0 is valid and gives empty results, as torch.nn.functional.conv2d does."""
    try:
        backends.load(backend)
    except ImportError as error:
        pytest.skip(str(error))
    x, kernel = np.zeros((0, 4, 5, 7), np.float32), np.zeros((0, 2, 3, 3, 3, 4), np.float32)
    out = involution2d(x, kernel, 2, 1, 1, backend=backend)
    assert out.shape == (0, 4, 3, 4) and out.dtype == np.float32, (out.shape, out.dtype)
    grad_x, grad_kernel = involution2d_backward(out, x, kernel, 2, 1, 1, backend=backend)
    assert (grad_x.shape, grad_kernel.shape) == (x.shape, kernel.shape), (grad_x.shape, grad_kernel.shape)


def test_front_door_defaults_to_the_fastest_available_backend():
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 5))
    kernel = np.random.default_rng(1).standard_normal((1, 2, 3, 3, 5, 5))
    expected = involution2d(x, kernel, 1, 1, 1, backend="reference")
    np.testing.assert_allclose(involution2d(x, kernel, 1, 1, 1), expected, rtol=1e-13, atol=1e-13)
    assert backends.default("numpy") in ("fast-cpu", "reference")


def test_definition_multiplies_padded_taps():
    """Policy (docs/spec.md): an infinite weight on a tap that reads zero padding gives inf * 0 = NaN, by the
    definition; the loops and the vectorised reference say so, and a finite weight there contributes nothing."""
    from involution.reference import involution2d as reference
    from involution.reference.loops import involution2d_loops

    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    kernel = np.ones((1, 1, 3, 3, 3, 3))
    kernel[0, 0, 0, 0, 0, 0] = np.inf  # output (0, 0), tap (0, 0) reads x_pad[-1, -1]: padding
    kernel[0, 0, 2, 2, 1, 1] = np.inf  # output (1, 1), tap (2, 2) reads x[2, 2] = 9: inside
    with np.errstate(invalid="ignore"):  # inf * 0 is the point
        results = (involution2d_loops(x, kernel, 1, 1, 1), reference(x, kernel, 1, 1, 1))
    for out in results:
        assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 1, 1] == np.inf, out
        assert out[0, 0, 2, 2] == x[0, 0, 1:, 1:].sum(), out  # finite weights on padding add 0


def test_front_door_rejects_mixed_frameworks():
    """A torch tensor among NumPy arrays would be converted and lose its autograd graph: a TypeError naming it."""
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 4, 5, 5))
    kernel = torch.zeros((1, 2, 3, 3, 5, 5), dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match=r"kernel must be a NumPy array \(B, G, Kh, Kw, Ho, Wo\), got torch.Tensor"):
        involution2d(x, kernel, 1, 1, 1)
    with pytest.raises(TypeError, match=r"kernel must be a torch.Tensor"):
        involution2d(torch.zeros((1, 4, 5, 5), dtype=torch.float64), np.zeros((1, 2, 3, 3, 5, 5)), 1, 1, 1)


@pytest.mark.parametrize("value", [np.array(2), np.array([2]), np.array([2, 2]), np.ma.masked_array(2)],
                         ids=repr)
def test_arrays_of_any_shape_are_not_integers(value):
    assert not is_integer(value)
    with pytest.raises(TypeError, match=r"^channels must be an int, got "):
        check_int(value, "channels", minimum=1)
    with pytest.raises(TypeError, match=r"^kernel_size must be an int or an \(h, w\) pair of ints, got "):
        pair(value, "kernel_size", minimum=1)


def test_tensors_of_any_shape_are_not_integers_and_numpy_scalars_are():
    torch = pytest.importorskip("torch")
    for value in (torch.tensor(2), torch.tensor([2, 2]), torch.tensor([2])):
        assert not is_integer(value), value
        with pytest.raises(TypeError, match=r"^stride must be an int or an \(h, w\) pair of ints, got "):
            pair(value, "stride", minimum=1)
    assert pair(np.int64(2), "stride", minimum=1) == (2, 2)
    assert check_int(np.uint8(3), "reduction", minimum=1) == 3
