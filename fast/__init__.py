"""Fast backends: numba CPU kernels (``involution.fast.cpu``) and numba.cuda kernels (``involution.fast.cuda``);
``involution.torch.ops`` makes them a torch op. Import the submodule you need; this package imports nothing
heavy, so ``import involution.fast`` stays cheap.

Both kernel backends share one dispatch convention: ``choose_version(name, geometry)`` picks the numbered
kernel that runs, ``versions_for(geometry)`` reports it, and an explicit ``version=`` a geometry cannot take is
a ValueError. ``involution.fast.runtime`` sets numba's threading layer and cache (docs/threading.md).
"""
