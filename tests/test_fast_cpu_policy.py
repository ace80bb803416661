"""The fast CPU backend's version policy is pinned: the same kernels chosen, and the same scratch sized, for the
geometries of ``tests/fast_cpu_policy.txt`` (recorded from the policy before the kernels were split by pass) and for
every RedNet-50 involution layer at batch 1 and 8. A change of policy is a deliberate edit of the table."""
import os

import numba
import pytest

pytest.importorskip("numba")

from involution.benchmarks.layers import REDNET_LAYERS, layer_geometry, layer_name  # noqa: E402
from involution.fast import cpu  # noqa: E402
from involution.spec import check_geometry, output_size  # noqa: E402

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fast_cpu_policy.txt")
# RedNet-50's layers choose the same versions on any thread count: v8 forward and grad_x; grad_kernel v9 except the
# 3x3 stem layer at batch 8 (v7): docs/performance.md, "Version policy".
REDNET = {(layer_name(layer), batch): (8, 8, 7 if layer.kernel == 3 and batch == 8 else 9)
          for layer in REDNET_LAYERS for batch in (1, 8)}


def _sections():
    sections, current = {}, None
    with open(TABLE) as table:
        for line in table:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
            else:
                current.append(line)
    return sections


SECTIONS = _sections()


def _geometry(fields):
    b, c, g, h, w, kh, kw, sh, sw, ph, pw, dh, dw = map(int, fields)
    out = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
    return check_geometry((b, c, h, w), (b, g, kh, kw, *out), (sh, sw), (ph, pw), (dh, dw))


@pytest.mark.parametrize("line", SECTIONS["choices"])
def test_same_versions_for_the_same_geometries(line, monkeypatch):
    geometry_fields, versions = line.split(":")
    geometry = _geometry(geometry_fields.split())
    for workers, expected in zip((1, 4), versions.split()):
        monkeypatch.setattr(numba, "get_num_threads", lambda workers=workers: workers)
        got = "".join(str(cpu.choose_version(name, geometry)) for name in cpu.KINDS)
        assert got == expected, f"{geometry} on {workers} threads: versions {got}, pinned {expected}"


@pytest.mark.parametrize("line", SECTIONS["scratch"])
def test_same_scratch_for_the_same_geometries(line):
    fields, sizes = line.split(":")
    *geometry_fields, name, version = fields.split()
    geometry = _geometry(geometry_fields)
    got = [cpu.scratch_elements(name, int(version), geometry, workers) for workers in (1, 2, 8)]
    assert got == [int(size) for size in sizes.split()], f"{name} v{version} on {geometry}: scratch {got}"


@pytest.mark.parametrize("layer, batch", list(REDNET), ids=[f"{name} b{batch}" for name, batch in REDNET])
def test_rednet_layers_choose_the_pinned_versions(layer, batch, monkeypatch):
    geometry = layer_geometry(next(each for each in REDNET_LAYERS if layer_name(each) == layer), batch)
    for workers in (1, 2, 16):
        monkeypatch.setattr(numba, "get_num_threads", lambda workers=workers: workers)
        got = tuple(cpu.versions_for(geometry)[name] for name in cpu.KINDS)
        assert got == REDNET[layer, batch], f"{layer} at batch {batch} on {workers} threads: {got}"
