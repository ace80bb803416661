"""Right for up to 4 channels per group; with 5 or more (every RedNet layer has 16) the last channel of each
group reads its neighbour's window (the kind of slip a channel-vector kernel's remainder loop makes)."""
from hostile_implementations import record
from involution.reference import involution2d as reference

record("imported")


def involution2d(x, kernel, stride=1, padding=0, dilation=1):
    out = reference(x, kernel, stride, padding, dilation)
    group_channels = x.shape[1] // kernel.shape[1] if x.ndim == 4 and kernel.ndim == 6 and kernel.shape[1] else 0
    if group_channels >= 5:
        out[:, group_channels - 1::group_channels] = out[:, group_channels - 2::group_channels]
    return out
