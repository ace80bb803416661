"""ONNX export of the registered op and of the default RedNet, with both ``torch.onnx`` exporters, run in ONNX Runtime.

The op's translation (involution/torch/export.py) is registered when ``involution.torch.ops`` is imported, so the
default model exports with no switch. Values are checked at two input sizes through dynamic batch, height and
width: the op's graph against a float64 evaluation with float32's error bound for a ``Kh*Kw``-term sum, the network
against eager float32.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")
onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from involution.spec import output_size  # noqa: E402
from involution.torch import RedNet  # noqa: E402
from involution.torch import ops  # noqa: E402

EXPORTERS = {"dynamo": True, "torchscript": False}
# The translation's opset (involution/torch/export.py). Not imported from there: importing involution.torch.ops
# alone must register the translations (importing the export module would register them whatever ops does).
OPSET = 18


class Op(torch.nn.Module):
    """The op alone, with fixed hyper-parameters: ``(x, kernel) -> involution2d(x, kernel, ...)``."""

    def __init__(self, stride, padding, dilation):
        super().__init__()
        self.hyper_parameters = stride, padding, dilation

    def forward(self, x, kernel):
        return ops.involution2d(x, kernel, *self.hyper_parameters)


def export(model, inputs, path, dynamo: bool, dynamic: dict[str, dict[int, str]]):
    """``torch.onnx.export`` with the ``dynamic`` dims of each named input free; returns the saved model's path."""
    names = list(dynamic)
    if dynamo:
        dims = {}
        shapes = {name: {axis: dims.setdefault(label, torch.export.Dim(label)) if label == "batch"
                         else torch.export.Dim.AUTO for axis, label in axes.items()} for name, axes in dynamic.items()}
        program = torch.onnx.export(model, inputs, dynamo=True, dynamic_shapes=shapes)
        program.save(str(path))
    else:
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=OPSET, input_names=names,
                          dynamic_axes=dynamic)
    return path


def run(path, inputs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {entry.name: tensor.numpy() for entry, tensor in zip(session.get_inputs(), inputs)}
    assert len(feeds) == len(inputs), f"the graph takes {len(session.get_inputs())} inputs, given {len(inputs)}"
    return session.run(None, feeds)[0]


def op_inputs(batch, channels, groups, size, kernel_size, stride, padding, dilation, seed):
    out_size = [output_size(*entry) for entry in zip(size, kernel_size, stride, padding, dilation)]
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, *size, generator=generator),
            torch.randn(batch, groups, *kernel_size, *out_size, generator=generator))


# (C, G, kernel_size, stride, padding, dilation, (first size, second size))
OP_CASES = [
    (6, 2, (3, 3), (1, 1), (1, 1), (1, 1), ((2, 9, 11), (3, 14, 8))),
    (6, 3, (3, 5), (2, 1), (3, 2), (2, 1), ((1, 11, 9), (2, 16, 13))),
    (32, 2, (7, 7), (2, 2), (3, 3), (1, 1), ((1, 12, 10), (2, 9, 15))),
]
OP_IDS = ["C{}G{}K{}s{}p{}d{}".format(*case[:6]).replace(" ", "") for case in OP_CASES]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", OP_CASES, ids=OP_IDS)
def test_op_exports_and_runs_at_two_sizes(case, exporter, tmp_path):
    """Each output within float32's bound for its ``Kh*Kw`` products and sum: ``(Kh*Kw+1) * eps * sum |x*k|``."""
    channels, groups, kernel_size, stride, padding, dilation, sizes = case
    model = Op(stride, padding, dilation)
    shapes = [(batch, channels, groups, (height, width), kernel_size, stride, padding, dilation)
              for batch, height, width in sizes]
    first = op_inputs(*shapes[0], seed=0)
    path = export(model, first, tmp_path / "op.onnx", EXPORTERS[exporter],
                  {"x": {0: "batch", 2: "height", 3: "width"}, "kernel": {0: "batch", 4: "out_h", 5: "out_w"}})
    bound_factor = (kernel_size[0] * kernel_size[1] + 1) * np.finfo(np.float32).eps
    for seed, shape in enumerate(shapes):
        x, kernel = first if seed == 0 else op_inputs(*shape, seed=seed)
        actual = run(path, (x, kernel))
        expected = model(x.double(), kernel.double()).numpy()
        bound = bound_factor * model(x.double().abs(), kernel.double().abs()).numpy()
        assert actual.shape == expected.shape, f"{exporter}, input {tuple(x.shape)}: shape {actual.shape}"
        excess = np.abs(actual - expected) - bound
        worst = np.unravel_index(np.argmax(excess), excess.shape)
        assert excess.max() <= 0, (f"{exporter}, input {tuple(x.shape)}: at {worst} onnxruntime {actual[worst]!r}, "
                                   f"float64 {expected[worst]!r}, bound {bound[worst]:.3g}")


def test_graph_size_does_not_grow_with_the_kernel(tmp_path):
    """One gather, multiply and sum for all taps: a 7x7 layer has the nodes of a 3x3 one (a tap loop has ~K*K)."""
    counts = {}
    for kernel_size in ((3, 3), (7, 7)):
        x, kernel = op_inputs(1, 8, 2, (9, 9), kernel_size, (1, 1), (kernel_size[0] // 2,) * 2, (1, 1), 0)
        path = export(Op((1, 1), (kernel_size[0] // 2,) * 2, (1, 1)), (x, kernel), tmp_path / "op.onnx", False,
                      {"x": {0: "batch"}, "kernel": {0: "batch"}})
        counts[kernel_size] = len(onnx.load(str(path)).graph.node)
    assert counts[(3, 3)] == counts[(7, 7)], f"nodes by kernel size: {counts}"


def test_channels_must_be_static(tmp_path):
    x, kernel = op_inputs(1, 4, 2, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 0)
    with pytest.raises(Exception, match=r"x \(B, C, H, W\) must have static sizes at dims \[1\]"):
        export(Op((1, 1), (1, 1), (1, 1)), (x, kernel), tmp_path / "op.onnx", False,
               {"x": {0: "batch", 1: "channels"}, "kernel": {0: "batch"}})


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_default_rednet26_exports_and_equals_eager_at_two_sizes(exporter, tmp_path):
    """``RedNet(26)`` with default arguments (the fast op), dynamic batch/height/width, eager float32 within
    ``2**10 * eps`` of its largest logit (the network's conv, BN and sum orders differ from torch's)."""
    model = RedNet(26).eval()
    assert {module.backend for module in model.modules() if hasattr(module, "backend")} == {"fast"}
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    path = export(model, (x,), tmp_path / "rednet26.onnx", EXPORTERS[exporter],
                  {"x": {0: "batch", 2: "height", 3: "width"}})
    for inputs in (x, torch.randn(2, 3, 80, 96, generator=torch.Generator().manual_seed(1))):
        with torch.no_grad():
            expected = model(inputs).numpy()
        actual = run(path, (inputs,))
        tolerance = 2 ** 10 * np.finfo(np.float32).eps * np.abs(expected).max()
        np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance,
                                   err_msg=f"{exporter}, input {tuple(inputs.shape)}")
