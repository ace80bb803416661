"""The option rules of the involution layer and of the RedNet / ResNet classifiers, shared by the NumPy layers
(:mod:`involution.reference`) and the torch models (:mod:`involution.torch.models`).

Rules only, like :mod:`involution.spec` beside it: importing them loads no layer, so ``import involution.torch``
does not load the NumPy layer stack. Every error names the option, what was expected and what came.
"""
from __future__ import annotations

from dataclasses import dataclass

from involution.spec import check_int, pair, same_padding

# depth -> bottlenecks per stage; the one table for RedNet and ResNet
STAGE_BLOCKS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4
MAX_SEED = 2**64 - 1  # numpy takes any seed >= 0; torch.manual_seed (the twin models) takes up to 2**64 - 1
KERNEL_GENERATORS = ("bottleneck", "linear")


@dataclass(frozen=True)
class InvolutionOptions:
    """Checked constructor options of an involution layer and the sizes derived from them.

    ``kernel_size``, ``stride`` and ``dilation`` are ``(h, w)`` pairs (an int ``n`` given to the constructor
    means ``(n, n)``).
    """

    channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    group_channels: int
    reduction: int
    kernel_gen: str

    @property
    def groups(self) -> int:
        """``G = C // group_channels``, the number of kernels per pixel."""
        return self.channels // self.group_channels

    @property
    def hidden(self) -> int:
        """Channels into ``conv2``: ``C // reduction`` after the bottleneck's ``conv1``, else ``C``."""
        return self.channels // self.reduction if self.kernel_gen == "bottleneck" else self.channels

    @property
    def taps(self) -> int:
        """Channels out of ``conv2``: ``Kh * Kw * G``, one kernel of ``Kh x Kw`` taps per group."""
        return self.kernel_size[0] * self.kernel_size[1] * self.groups

    @property
    def padding(self) -> tuple[int, int]:
        """The op's "same" padding ``dilation * (K - 1) // 2`` per axis (:func:`involution.spec.same_padding`)."""
        return same_padding(self.kernel_size, self.dilation)

    @property
    def strided(self) -> bool:
        """Whether the kernel generator pools first: ``AvgPool2d(stride, stride, ceil_mode=True)`` when a
        stride exceeds 1, bringing the input to the output grid."""
        return self.stride != (1, 1)


def check_involution_options(channels, kernel_size, stride, group_channels, reduction, kernel_gen,
                             dilation) -> InvolutionOptions:
    """Validate the options of an involution layer (NumPy or torch) and derive its sizes.

    Parameters
    ----------
    channels, reduction : int
        Each ``>= 1``; ``channels`` divisible by ``reduction`` for ``"bottleneck"``.
    kernel_size, stride, dilation : int or (h, w) pair of ints
        Each ``>= 1``; both kernel sizes odd (the "same" padding keeps the size only for odd ``K``).
    group_channels : int or "all"
        Divides ``channels``; ``"all"`` means ``channels`` (one group).
    kernel_gen : "bottleneck" or "linear"

    Returns
    -------
    InvolutionOptions
        The options as ints and ``(h, w)`` pairs, with ``groups``, ``hidden``, ``taps``, ``padding``.

    Raises
    ------
    TypeError
        An option that is not an int (or pair of ints where a pair is allowed; ``group_channels`` may also be
        ``"all"``). Nothing is truncated: ``2.0`` or a triple is an error.
    ValueError
        An option out of range, an even kernel size, a divisibility that fails, an unknown ``kernel_gen``.
    """
    channels = check_int(channels, "channels", minimum=1)
    kernel_size = pair(kernel_size, "kernel_size", minimum=1)
    stride = pair(stride, "stride", minimum=1)
    dilation = pair(dilation, "dilation", minimum=1)
    reduction = check_int(reduction, "reduction", minimum=1)
    if kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0:
        raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
    if isinstance(group_channels, str) and group_channels == "all":
        group_channels = channels
    group_channels = check_int(group_channels, "group_channels", minimum=1)
    if channels % group_channels:
        raise ValueError(f"channels ({channels}) must be divisible by group_channels ({group_channels})")
    if kernel_gen not in KERNEL_GENERATORS:
        raise ValueError(f"kernel_gen must be one of {KERNEL_GENERATORS}, got {kernel_gen!r}")
    if kernel_gen == "bottleneck" and channels % reduction:
        raise ValueError(f"channels ({channels}) must be divisible by reduction ({reduction})")
    return InvolutionOptions(channels, kernel_size, stride, dilation, group_channels, reduction, kernel_gen)


def stage_blocks_for(depth, stage_blocks=None) -> tuple[int, ...]:
    """``stage_blocks`` if given, else the standard blocks per stage of ``depth`` (26, 38, 50, 101, 152).

    Raises
    ------
    TypeError
        ``depth`` or a block count that is not an int (``50.0`` and ``True`` are errors), ``stage_blocks`` not a
        tuple or list.
    ValueError
        An unknown ``depth``, an empty ``stage_blocks`` or a block count below 1.
    """
    if stage_blocks is not None:
        if not isinstance(stage_blocks, (tuple, list)):
            raise TypeError(f"stage_blocks must be a tuple of ints, got {type(stage_blocks).__name__}")
        if not stage_blocks:
            raise ValueError("stage_blocks must hold at least one stage, got ()")
        return tuple(check_int(blocks, f"stage_blocks[{index}]", minimum=1)
                     for index, blocks in enumerate(stage_blocks))
    if check_int(depth, "depth", minimum=1) not in STAGE_BLOCKS:
        raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)} (or pass stage_blocks), got {depth!r}")
    return STAGE_BLOCKS[depth]


def check_classifier_options(num_classes, stem_channels, base_channels, seed, *, even_stem: bool) -> None:
    """Named ``TypeError``/``ValueError`` unless ``num_classes``, ``stem_channels``, ``base_channels >= 1`` are
    ints, ``seed`` an int in ``[0, 2**64 - 1]`` and, with ``even_stem`` (RedNet, whose stem starts with
    ``stem_channels // 2`` channels), ``stem_channels`` even. RedNet's and ResNet's options, NumPy and torch alike."""
    for name, value in (("num_classes", num_classes), ("stem_channels", stem_channels),
                        ("base_channels", base_channels)):
        check_int(value, name, minimum=1)
    check_int(seed, "seed", minimum=0, maximum=MAX_SEED)
    if even_stem and stem_channels % 2:
        raise ValueError(f"stem_channels must be even (the stem's first conv has stem_channels // 2 channels), "
                         f"got {stem_channels}")
