"""The numbered CPU kernels by name, from the modules they moved to (one per pass); removed in the next commit."""
from .cpu_blocks import *  # noqa: F401,F403
from .cpu_forward import *  # noqa: F401,F403
from .cpu_grad_kernel import *  # noqa: F401,F403
from .cpu_grad_x import *  # noqa: F401,F403
from .cpu_grad_x import band_v8  # noqa: F401

grad_x_v4, grad_kernel_v4 = grad_x_v3, grad_kernel_v3  # noqa: F405
grad_x_v5, grad_kernel_v5 = grad_x_v3, grad_kernel_v3  # noqa: F405
grad_x_v6, grad_kernel_v6 = grad_x_v3, grad_kernel_v3  # noqa: F405
forward_v7, grad_x_v7 = forward_v6, grad_x_v3  # noqa: F405
grad_kernel_v8 = grad_kernel_v7  # noqa: F405
forward_v9, grad_x_v9 = forward_v8, grad_x_v8  # noqa: F405
