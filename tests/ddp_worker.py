"""One process of the DistributedDataParallel test (tests/test_torch_ddp.py); also imported there for the
single-process reference run, so both sides build the same model, data and optimizer.

Run as ``python tests/ddp_worker.py RANK WORLD_SIZE RENDEZVOUS_FILE OUT_DIR``: joins a gloo process group on the
loopback interface (rendezvous through a file, no port), trains ``STEPS`` SGD steps of a tiny float64 RedNet with
the fast op on its shard of each batch, and saves each step's gradients and the final parameters to
``OUT_DIR/rank{RANK}.pt``.
"""
from __future__ import annotations

import sys
from datetime import timedelta

import torch

STEPS, BATCH_PER_RANK, SIZE = 3, 2, 16
TINY = dict(stage_blocks=(1, 1), stem_channels=16, base_channels=8, group_channels=4, kernel_size=3, num_classes=5)


def build_model():
    """A tiny float64 RedNet on the fast op with frozen BatchNorm (eval mode: the statistics are not per-process
    batch statistics, which would differ from the concatenated batch's; SyncBatchNorm needs a GPU)."""
    from involution.torch import RedNet

    return RedNet(**TINY, dtype=torch.float64, seed=0, backend="fast").eval()


def global_batches(world_size: int):
    """``STEPS`` batches of ``world_size * BATCH_PER_RANK`` images and labels (the concatenation of the shards)."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(STEPS, world_size * BATCH_PER_RANK, 3, SIZE, SIZE, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, TINY["num_classes"], (STEPS, world_size * BATCH_PER_RANK), generator=generator)
    return images, labels


def train(model, images, labels) -> dict:
    """SGD (momentum) on ``(images[step], labels[step])``; each step's gradients and the final parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gradients = []
    for step in range(len(images)):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images[step]), labels[step]).backward()
        gradients.append({name: parameter.grad.clone() for name, parameter in named_parameters(model)})
        optimizer.step()
    return {"gradients": gradients, "parameters": {name: p.detach().clone() for name, p in named_parameters(model)}}


def named_parameters(model):
    """``(name, parameter)`` without DDP's ``module.`` prefix."""
    module = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return module.named_parameters()


def main(rank: int, world_size: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                                         world_size=world_size, timeout=timedelta(seconds=60))
    try:
        model = torch.nn.parallel.DistributedDataParallel(build_model())
        images, labels = global_batches(world_size)
        shard = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        torch.save(train(model, images[:, shard], labels[:, shard]), f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
