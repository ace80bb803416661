"""Fast backends: numba CPU kernels (``involution.fast.cpu``), numba.cuda kernels (``involution.fast.cuda``) and
the torch bridge (``involution.fast.torch_ops``). Import the submodule you need; this package imports nothing
heavy, so ``import involution.fast`` stays cheap."""
