"""Train a small RedNet with DistributedDataParallel on CPU processes (gloo), on synthetic data.

    python examples/ddp_train.py --processes 2                # spawns 2 processes on this machine (127.0.0.1)
    torchrun --nproc-per-node 2 examples/ddp_train.py         # or let torchrun start them

Each class is a fixed random pattern plus noise, so the loss falls within a few epochs; nothing is downloaded.
The involution layers run the project's op (``--backend fast``: the numba kernels registered as a torch op), which
DDP treats like any other op: gradients are all-reduced after each backward. Each process normalises BatchNorm
with its own batch (``torch.nn.SyncBatchNorm`` needs GPUs; on GPUs use the nccl backend and convert with
``SyncBatchNorm.convert_sync_batchnorm``).
"""
import argparse
import os
import socket

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from involution.torch import RedNet


def synthetic_data(samples: int, classes: int, size: int) -> TensorDataset:
    """``samples`` images ``3 x size x size``: class pattern + noise (the same on every process: seeded)."""
    generator = torch.Generator().manual_seed(0)
    patterns = torch.randn(classes, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (samples,), generator=generator)
    images = patterns[labels] + 2.0 * torch.randn(samples, 3, size, size, generator=generator)
    return TensorDataset(images, labels)


def train(rank: int, world_size: int, args) -> None:
    if not dist.is_initialized():  # started by --processes (torchrun initialises from its environment below)
        dist.init_process_group("gloo", init_method=args.init_method, rank=rank, world_size=world_size)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    model = RedNet(stage_blocks=(1, 1, 1), stem_channels=32, base_channels=16, kernel_size=3, group_channels=8,
                   num_classes=args.classes, backend=args.backend)
    model = DistributedDataParallel(model)
    dataset = synthetic_data(args.samples, args.classes, args.size)
    sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch, sampler=sampler)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every process
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, samples
        for images, labels in loader:
            optimizer.zero_grad()
            logits = model(images)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            loss.backward()  # DDP all-reduces (averages) the gradients here
            optimizer.step()
            totals += torch.tensor([loss.item() * len(labels), (logits.argmax(1) == labels).sum().item(), len(labels)],
                                   dtype=torch.float64)
        dist.all_reduce(totals)
        if rank == 0:
            print(f"epoch {epoch + 1}: loss {totals[0] / totals[2]:.3f}, train accuracy {totals[1] / totals[2]:.1%}",
                  flush=True)
    if rank == 0 and args.out:
        torch.save({"state_dict": model.module.state_dict()}, args.out)  # keys without DDP's "module." prefix
        print(f"wrote {args.out}")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="processes to spawn (ignored under torchrun)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16, help="per process")
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--backend", default="fast", help="torch backend of the involution op: fast or taps")
    parser.add_argument("--out", help="save the trained weights (rank 0) as a checkpoint")
    args = parser.parse_args()
    if args.processes < 1 or args.epochs < 1 or args.batch < 1 or args.samples < 1:
        parser.error("--processes, --epochs, --batch and --samples must be >= 1")
    if "RANK" in os.environ:  # torchrun
        dist.init_process_group("gloo")
        train(dist.get_rank(), dist.get_world_size(), args)
    else:
        args.init_method = f"tcp://127.0.0.1:{free_port()}"
        torch.multiprocessing.spawn(train, args=(args.processes, args), nprocs=args.processes)


if __name__ == "__main__":
    main()
