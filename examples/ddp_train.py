"""Train a small CNN with DistributedDataParallel and synchronized gpulayers batch normalization.

    torchrun --nproc-per-node 2 examples/ddp_train.py            # two CPU processes (gloo)
    torchrun --nproc-per-node 2 examples/ddp_train.py --steps 50  # on a machine with 2 GPUs: NCCL

Each process gets its own shard of a synthetic data set (uneven shards on purpose: the
statistics merge is exact for any batch sizes). The model mixes PyTorch layers (Conv2d,
ReLU, Linear) with gpulayers.torch layers (BatchNormalization(synchronized=True),
MaxPooling2D, GlobalAveragePooling2D); on GPUs the gpulayers layers run their own CUDA
kernels on PyTorch's stream. Without torchrun the script runs as one process.
"""
import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import gpulayers.torch as glt


def make_model():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        glt.BatchNormalization(axis=1, momentum=0.9, synchronized=True),
        nn.ReLU(),
        glt.MaxPooling2D(2, data_format="channels_first"),
        nn.Conv2d(16, 32, 3, padding=1),
        glt.BatchNormalization(axis=1, momentum=0.9, synchronized=True),
        nn.ReLU(),
        glt.GlobalAveragePooling2D(data_format="channels_first"),
        nn.Linear(32, 2),
    )


def synthetic_data(n, generator):
    """Images whose label is whether the red channel is brighter than the blue one."""
    x = torch.randn(n, 3, 16, 16, generator=generator)
    x[:, 0] += torch.randn(n, 1, 1, generator=generator)
    y = (x[:, 0].mean(dim=(1, 2)) > x[:, 2].mean(dim=(1, 2))).long()
    return x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    parser.add_argument("--batch", type=int, default=32, help="samples per step over all processes (default 32)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    use_cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")

    torch.manual_seed(0)  # the same initial weights on every process
    model = make_model().to(device)
    model.eval()  # inference: no statistics move, no collective
    model(torch.zeros(2, 3, 16, 16, device=device))  # create the lazily built gpulayers weights
    model.train()
    if distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    # uneven shards: process r takes a share proportional to r + 1 of each global batch
    weights = [r + 1 for r in range(world)]
    sizes = [args.batch * w // sum(weights) for w in weights]
    sizes[-1] += args.batch - sum(sizes)
    start = sum(sizes[:rank])
    generator = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        x, y = synthetic_data(args.batch, generator)  # the same global batch on every process
        x, y = x[start:start + sizes[rank]].to(device), y[start:start + sizes[rank]].to(device)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if distributed:
            loss = loss.detach() * sizes[rank] / args.batch
            dist.all_reduce(loss)
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  loss {loss.item():.4f}  ({world} process(es), {device.type})", flush=True)

    module = model.module if distributed else model
    if distributed:
        dist.barrier()  # every process has finished training
    if rank == 0:
        print("moving_mean of the first batch norm:", module[1].moving_mean[:4].tolist())
        print(f"done: {world} process(es) trained {args.steps} steps", flush=True)
    if distributed:
        del model, module, optimizer  # DDP's reducer holds the group: release it first
        dist.destroy_process_group()

if __name__ == "__main__":
    main()
