"""The suite judges every kernel version the fast backends run for RedNet's layers: each (kind, version) that
``versions_for`` gives a real layer is also given to a core case or to a case the suite's strategies draw for that
backend (with the limits the suite uses for it), found here with ``hypothesis.find``."""
import pytest
from hypothesis import HealthCheck, find, settings
from hypothesis.errors import NoSuchExample

from involution.benchmarks.layers import REDNET_LAYERS, layer_geometry
from involution.conformance.backends import Implementation
from involution.conformance.core import CORE, core_case, describe
from involution.conformance.strategies import geometries

BATCHES = (1, 8)  # the benchmark's batch sizes: grad_kernel's version depends on the batch


def backend_module(name: str):
    if name == "fast-cpu":
        from involution.fast import cpu

        return cpu
    return pytest.importorskip("involution.fast.cuda", reason="numba.cuda needs a GPU or NUMBA_ENABLE_CUDASIM=1")


@pytest.mark.parametrize("name", ["fast-cpu", "fast-cuda"])
def test_every_version_real_layers_run_is_selected_by_a_suite_case(name):
    module = backend_module(name)
    real = {(kind, version) for layer in REDNET_LAYERS for batch in BATCHES
            for kind, version in module.versions_for(layer_geometry(layer, batch)).items()}
    mapping = {}
    for kind, version in sorted(real):
        core = [describe(entry) for entry in CORE if module.choose_version(kind, core_case(entry)[0]) == version]
        try:
            drawn = find(geometries(Implementation(name).limits), lambda g: module.choose_version(kind, g) == version,
                         settings=settings(max_examples=3000, database=None, suppress_health_check=list(HealthCheck)))
            drawn = f"drawn x {drawn.x_shape} kernel {drawn.kernel_shape} stride {drawn.stride}"
        except NoSuchExample:
            drawn = None
        mapping[kind, version] = (core[0] if core else None, drawn)
    print(name, mapping)
    assert all(core or drawn for core, drawn in mapping.values()), f"versions no suite case selects: {mapping}"
    if name == "fast-cpu":  # the random draws reach each of them too (the simulator's caps keep CUDA draws tiny)
        assert all(drawn for _, drawn in mapping.values()), f"versions the strategies never draw: {mapping}"
        assert ("forward", 8) in mapping and ("grad_x", 8) in mapping, mapping  # the channel-vector kernels
