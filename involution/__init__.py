"""involution: reference, verified fast backends and conformance suite for the involution op and RedNet.

Subpackages: ``involution.reference`` (NumPy), ``involution.fast`` (numba CPU and CUDA),
``involution.conformance`` (the PyTorch-oracle test suite).
"""
__version__ = "0.1.0"
