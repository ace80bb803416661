"""PyTorch modules and ops: ``Involution2d``, ``InvolutionConv2d``, ``RedNet``, ``ResNet`` (backend chosen by name),
the tap-loop op and the checkpoint loader shared with the NumPy models.

``load_checkpoint`` is :func:`involution.reference.checkpoint.load_checkpoint`, imported on first use, so that
``import involution.torch`` does not load the NumPy layers.
"""
from .conv import InvolutionConv2d
from .models import Bottleneck, Involution2d, RedNet, ResNet

__all__ = ["Bottleneck", "Involution2d", "InvolutionConv2d", "RedNet", "ResNet", "load_checkpoint"]


def __getattr__(name: str):
    if name == "load_checkpoint":
        from involution.reference.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
