"""NumPy reference: the involution op, its analytic backward, the involution layer and RedNet."""
from .activation import ReLU
from .checkpoint import load_checkpoint, load_npz, save_npz, state_dict_from_torch
from .conv import Conv2d, ConvModule
from .involution_layer import Involution2d
from .linear import Linear
from .loss import softmax_cross_entropy
from .module import Chain, Module, Parameter, Sequential
from .norm import BatchNorm2d
from .op import involution2d, involution2d_backward
from .optim import SGD
from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .rednet import Bottleneck, RedNet
from .resnet import ResNet
from involution.spec import Geometry, check_involution2d, check_involution2d_backward, output_size

__all__ = [
    "AvgPool2d",
    "BatchNorm2d",
    "Bottleneck",
    "Chain",
    "Conv2d",
    "ConvModule",
    "Geometry",
    "GlobalAvgPool2d",
    "Involution2d",
    "Linear",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "RedNet",
    "ResNet",
    "SGD",
    "Sequential",
    "check_involution2d",
    "check_involution2d_backward",
    "involution2d",
    "involution2d_backward",
    "load_checkpoint",
    "load_npz",
    "output_size",
    "save_npz",
    "softmax_cross_entropy",
    "state_dict_from_torch",
]
