"""PyTorch modules and ops: ``Involution2d``, ``InvolutionConv2d``, ``RedNet``, ``ResNet`` (backend chosen by name),
the tap-loop op and the checkpoint loader shared with the NumPy models."""
from involution.reference.checkpoint import load_checkpoint

from .conv import InvolutionConv2d
from .models import Bottleneck, Involution2d, RedNet, ResNet

__all__ = ["Bottleneck", "Involution2d", "InvolutionConv2d", "RedNet", "ResNet", "load_checkpoint"]
