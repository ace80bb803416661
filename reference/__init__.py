"""NumPy reference: the involution op, its analytic backward, the involution layer and RedNet."""
from .op import involution2d, involution2d_backward
from .shapes import Geometry, check_involution2d, check_involution2d_backward, output_size

__all__ = [
    "Geometry",
    "check_involution2d",
    "check_involution2d_backward",
    "involution2d",
    "involution2d_backward",
    "output_size",
]
