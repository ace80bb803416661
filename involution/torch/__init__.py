"""PyTorch modules and ops: ``Involution2d``, ``RedNet``, ``ResNet`` (backend chosen by name) and the tap-loop op."""
from .models import Bottleneck, Involution2d, RedNet, ResNet

__all__ = ["Bottleneck", "Involution2d", "RedNet", "ResNet"]
