"""Ill-posed input, which has no defined result: the correct tier demands an exception, the strict tier a
ValueError or TypeError naming the argument (OpInfo-style ``error_inputs``).

Only input the op's definition cannot answer is listed. What a definition could answer but an implementation
may decline (float16, integers, mixed dtypes, an empty batch) is a capability (``test_op_capabilities.py``).
"""
import re
from dataclasses import dataclass

import numpy as np
import pytest

from involution.conformance.backends import InputModified

# A valid call to perturb: x (2, 4, 5, 6), G = 2, 3x3 kernel, stride 1, padding 1, dilation 1 -> out (2, 4, 5, 6).
X_SHAPE, KERNEL_SHAPE, OUT_SHAPE = (2, 4, 5, 6), (2, 2, 3, 3, 5, 6), (2, 4, 5, 6)


@dataclass(frozen=True)
class IllPosed:
    """One call with no defined result: what is wrong, the arguments, and the names its error message may use."""

    description: str
    names: str  # regular expression: a strict error message must contain one of these words
    x_shape: tuple = X_SHAPE
    kernel_shape: tuple = KERNEL_SHAPE
    stride: object = 1
    padding: object = 1
    dilation: object = 1
    grad_out_shape: tuple = OUT_SHAPE

    def arrays(self):
        """``(grad_out, x, kernel)`` of the stated shapes, float64, standard normal."""
        rng = np.random.default_rng(0)
        return tuple(rng.standard_normal(shape) for shape in (self.grad_out_shape, self.x_shape, self.kernel_shape))


ILL_POSED = [
    IllPosed("x is 3-D", "x", x_shape=X_SHAPE[1:]),
    IllPosed("x is 5-D", "x", x_shape=X_SHAPE + (1,)),
    IllPosed("kernel is 5-D", "kernel", kernel_shape=KERNEL_SHAPE[1:]),
    IllPosed("G=3 does not divide C=4", "G|groups?|kernel", kernel_shape=(2, 3, 3, 3, 5, 6)),
    IllPosed("kernel spatial size 4x6 is not the output size 5x6", "kernel|output", kernel_shape=(2, 2, 3, 3, 4, 6)),
    IllPosed("kernel spatial size 5x7 is not the output size 5x6", "kernel|output", kernel_shape=(2, 2, 3, 3, 5, 7)),
    IllPosed("kernel batch 1, x batch 2", "batch|kernel", kernel_shape=(1, 2, 3, 3, 5, 6)),
    IllPosed("kernel spatial size 1x1 (broadcast over positions), output 5x6", "kernel|output",
             kernel_shape=(2, 2, 3, 3, 1, 1)),
    IllPosed("stride 0", "stride", stride=0),
    IllPosed("stride -1", "stride", stride=-1),
    IllPosed("stride (1, 0)", "stride", stride=(1, 0)),
    IllPosed("stride 1.5", "stride", stride=1.5),
    IllPosed("stride of 3 values", "stride", stride=(1, 1, 1)),
    IllPosed("dilation 0", "dilation", dilation=0),
    IllPosed("dilation 2.0", "dilation", dilation=2.0, kernel_shape=(2, 2, 3, 3, 3, 4)),
    IllPosed("padding -1", "padding", padding=-1),
    IllPosed("padding (1, 1, 1)", "padding", padding=(1, 1, 1)),
    IllPosed("output would be 0x0", "output", x_shape=(2, 4, 2, 2), kernel_shape=(2, 2, 5, 5, 1, 1), padding=0),
]
BACKWARD_ILL_POSED = [
    IllPosed("grad_out shape (2, 4, 6, 6) is not the output shape", "grad_out", grad_out_shape=(2, 4, 6, 6)),
    IllPosed("grad_out is 3-D", "grad_out", grad_out_shape=OUT_SHAPE[1:]),
    IllPosed("grad_out batch 1, x batch 2", "grad_out", grad_out_shape=(1,) + OUT_SHAPE[1:]),
    *ILL_POSED,
]


def shown(value) -> str:
    """What an implementation returned, briefly: type, shape and dtype of arrays (and of tuples' items)."""
    if isinstance(value, tuple):
        return "(" + ", ".join(shown(item) for item in value) + ")"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return repr(value)[:200]


def raised(function, args, description):
    """The exception ``function(*args)`` raised; a test failure showing the value if it returned one."""
    try:
        value = function(*args)
    except InputModified:  # changing an input is a failure even where raising is the answer
        raise
    except Exception as error:  # any exception answers ill-posed input in the correct tier
        return error
    pytest.fail(f"{description}: returned {shown(value)} instead of raising")


def assert_named(error, case: IllPosed, framework: str = "numpy") -> None:
    """The strict tier: ``error`` is a ValueError or TypeError whose message names the argument; under
    ``--framework torch`` also a RuntimeError (torch's own checks raise it, naming the argument)."""
    accepted = (ValueError, TypeError, RuntimeError) if framework == "torch" else (ValueError, TypeError)
    assert isinstance(error, accepted), \
        f"{case.description}: raised {type(error).__name__}({error}), expected " \
        f"{' or '.join(kind.__name__ for kind in accepted)}"
    assert re.search(rf"\b({case.names})\b", str(error), re.IGNORECASE), \
        f"{case.description}: message {str(error)!r} does not name {case.names!r}"


def forward_args(case: IllPosed):
    _, x, kernel = case.arrays()
    return x, kernel, case.stride, case.padding, case.dilation


def backward_args(impl, case: IllPosed):
    if impl.backward is None:
        pytest.skip(f"{impl.name} has no involution2d_backward")
    if case.names == "grad_out" and impl.gradients != "involution2d_backward":
        # autograd, not the implementation, meets grad_out: its answer is the adapter's, never the port's
        pytest.skip(f"n/a: {impl.name}'s gradients come from {impl.gradients}, which checks grad_out itself")
    return (*case.arrays(), case.stride, case.padding, case.dilation)


@pytest.mark.parametrize("case", ILL_POSED, ids=lambda c: c.description)
def test_forward_rejects_ill_posed_input(impl, case):
    raised(impl.forward, forward_args(case), case.description)


@pytest.mark.parametrize("case", BACKWARD_ILL_POSED, ids=lambda c: c.description)
def test_backward_rejects_ill_posed_input(impl, case):
    raised(impl.backward, backward_args(impl, case), case.description)


@pytest.mark.parametrize("case", ILL_POSED, ids=lambda c: c.description)
def test_forward_errors_name_the_argument(impl, case):
    assert_named(raised(impl.forward, forward_args(case), case.description), case, impl.framework)


@pytest.mark.parametrize("case", BACKWARD_ILL_POSED, ids=lambda c: c.description)
def test_backward_errors_name_the_argument(impl, case):
    assert_named(raised(impl.backward, backward_args(impl, case), case.description), case, impl.framework)
