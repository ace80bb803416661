"""Invalid input raises ValueError or TypeError naming the argument (OpInfo-style ``error_inputs``)."""
import re
from dataclasses import dataclass

import numpy as np
import pytest

# A valid call to perturb: x (2, 4, 5, 6), G = 2, 3x3 kernel, stride 1, padding 1, dilation 1 -> out (2, 4, 5, 6).
X_SHAPE, KERNEL_SHAPE, OUT_SHAPE = (2, 4, 5, 6), (2, 2, 3, 3, 5, 6), (2, 4, 5, 6)


@dataclass(frozen=True)
class ErrorInput:
    """One invalid call: what is wrong, the arguments, the expected error type and a word its message must contain."""

    description: str
    error: type
    names: str
    x_shape: tuple = X_SHAPE
    kernel_shape: tuple = KERNEL_SHAPE
    x_dtype: object = np.float64
    kernel_dtype: object = np.float64
    stride: object = 1
    padding: object = 1
    dilation: object = 1
    grad_out_shape: tuple = OUT_SHAPE
    grad_out_dtype: object = np.float64

    def arrays(self):
        """``(grad_out, x, kernel)`` of the stated shapes and dtypes (ones, so int/complex/object work too)."""
        return (np.ones(self.grad_out_shape, dtype=self.grad_out_dtype), np.ones(self.x_shape, dtype=self.x_dtype),
                np.ones(self.kernel_shape, dtype=self.kernel_dtype))


FORWARD_ERROR_INPUTS = [
    ErrorInput("x is 3-D", ValueError, "x", x_shape=X_SHAPE[1:]),
    ErrorInput("kernel is 5-D", ValueError, "kernel", kernel_shape=KERNEL_SHAPE[1:]),
    ErrorInput("G=3 does not divide C=4", ValueError, "G|groups", kernel_shape=(2, 3, 3, 3, 5, 6)),
    ErrorInput("kernel spatial size 4x6 is not the output size 5x6", ValueError, "kernel|output",
               kernel_shape=(2, 2, 3, 3, 4, 6)),
    ErrorInput("kernel batch 1, x batch 2", ValueError, "batch", kernel_shape=(1, 2, 3, 3, 5, 6)),
    ErrorInput("empty batch", ValueError, "x|kernel|empty", x_shape=(0, 4, 5, 6), kernel_shape=(0, 2, 3, 3, 5, 6)),
    ErrorInput("stride 0", ValueError, "stride", stride=0),
    ErrorInput("stride -1", ValueError, "stride", stride=-1),
    ErrorInput("stride (1, 0)", ValueError, "stride", stride=(1, 0)),
    ErrorInput("stride 1.5", TypeError, "stride", stride=1.5),
    ErrorInput("stride of 3 values", ValueError, "stride", stride=(1, 1, 1)),
    ErrorInput("dilation 0", ValueError, "dilation", dilation=0),
    ErrorInput("padding -1", ValueError, "padding", padding=-1),
    ErrorInput("output would be 0x0", ValueError, "output", x_shape=(2, 4, 2, 2), kernel_shape=(2, 2, 5, 5, 1, 1),
               padding=0),
    ErrorInput("int32 dtype", TypeError, "dtype", x_dtype=np.int32, kernel_dtype=np.int32),
    ErrorInput("complex128 dtype", TypeError, "dtype", x_dtype=np.complex128, kernel_dtype=np.complex128),
    ErrorInput("object dtype", TypeError, "dtype", x_dtype=object, kernel_dtype=object),
    ErrorInput("float16 dtype", TypeError, "dtype", x_dtype=np.float16, kernel_dtype=np.float16),
    ErrorInput("bool dtype", TypeError, "dtype", x_dtype=np.bool_, kernel_dtype=np.bool_),
    ErrorInput("x float32, kernel float64", TypeError, "dtype", x_dtype=np.float32),
]
BACKWARD_ERROR_INPUTS = [
    ErrorInput("grad_out shape (2, 4, 6, 6) is not the output shape", ValueError, "grad_out",
               grad_out_shape=(2, 4, 6, 6)),
    ErrorInput("grad_out is 3-D", ValueError, "grad_out", grad_out_shape=OUT_SHAPE[1:]),
    ErrorInput("grad_out float32 for float64 x", TypeError, "grad_out", grad_out_dtype=np.float32),
    ErrorInput("grad_out int64", TypeError, "grad_out", grad_out_dtype=np.int64),
    ErrorInput("G=3 does not divide C=4", ValueError, "G|groups", kernel_shape=(2, 3, 3, 3, 5, 6)),
    ErrorInput("stride 0", ValueError, "stride", stride=0),
    ErrorInput("x float32, kernel float64", TypeError, "dtype", x_dtype=np.float32),
]


def check_raises(function, args, error_input) -> None:
    """Call ``function(*args)``; it must raise ``error_input.error`` whose message names the argument."""
    try:
        function(*args)
    except (ValueError, TypeError) as error:
        assert isinstance(error, error_input.error), \
            f"{error_input.description}: raised {type(error).__name__}({error}), expected {error_input.error.__name__}"
        assert re.search(rf"\b({error_input.names})\b", str(error), re.IGNORECASE), \
            f"{error_input.description}: message {str(error)!r} does not name {error_input.names!r}"
    else:
        pytest.fail(f"{error_input.description}: no error raised, expected {error_input.error.__name__}")


@pytest.mark.parametrize("error_input", FORWARD_ERROR_INPUTS, ids=lambda e: e.description)
def test_forward_rejects_invalid_input(impl, error_input):
    _, x, kernel = error_input.arrays()
    check_raises(impl.forward, (x, kernel, error_input.stride, error_input.padding, error_input.dilation),
                 error_input)


@pytest.mark.parametrize("error_input", BACKWARD_ERROR_INPUTS, ids=lambda e: e.description)
def test_backward_rejects_invalid_input(impl, error_input):
    if impl.backward is None:
        pytest.skip(f"{impl.name} has no involution2d_backward")
    grad_out, x, kernel = error_input.arrays()
    check_raises(impl.backward, (grad_out, x, kernel, error_input.stride, error_input.padding, error_input.dilation),
                 error_input)
