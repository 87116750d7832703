"""SGD solver throughput: ratings per second per epoch, next to the seed's autograd loop.

    python benchmarks/sgd_throughput.py                 # 1M ratings, 6,040 x 3,706, factors 64
    python benchmarks/sgd_throughput.py --device cuda

The data is a planted low-rank set of ML-1M's shape (torchmf.datasets.synthetic),
so no download is needed. Each optimizer runs one warm-up epoch, then the
median of ``--repeats`` timed epochs is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from torchmf.datasets import synthetic
from torchmf.nn import MFModel
from torchmf.solvers.sgd import SGDSettings, make_sgd_epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_epochs(run, repeats: int, device: torch.device) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def seed_loop(users, items, values, n_users, n_items, dim, batch, device):
    """The seed's training loop: autograd, nn.MSELoss, torch.optim.SGD."""
    model = MFModel(n_users, n_items, dim).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.MSELoss()

    def epoch() -> None:
        perm = torch.randperm(len(values), device=device)
        for s in range(0, len(values), batch):
            idx = perm[s : s + batch]
            opt.zero_grad()
            loss_fn(model(users[idx], items[idx]), values[idx]).backward()
            opt.step()

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-seed", action="store_true", help="do not time the seed's autograd loop")
    args = parser.parse_args()
    device = torch.device(args.device)
    data, _ = synthetic(args.users, args.items, args.ratings, rank=16, noise=0.5, seed=0)
    n = len(data)
    users = torch.as_tensor(data.users, device=device)
    items = torch.as_tensor(data.items, device=device)
    values = torch.as_tensor(data.values, device=device)
    print(f"Machine: {machine()}; device {device}")
    print(f"{n:,} ratings, {args.users:,} x {args.items:,}, factors {args.factors}, batch {args.batch_size}\n")
    print("| trainer | M ratings/s per epoch | final train loss |")
    print("|---|---:|---:|")
    for opt, lr in (("sgd", 0.005), ("adagrad", 0.05), ("adam", 0.005), ("sparse_adam", 0.005)):
        model = MFModel(args.users, args.items, args.factors, biases=True, init_std=0.1).to(device)
        model.requires_grad_(False)
        model.global_bias.fill_(float(values.mean()))
        gen = torch.Generator(device=device).manual_seed(0)
        run = make_sgd_epoch(model, users, items, values, SGDSettings(lr, 0.02, 0.02, args.batch_size, opt), gen)
        losses: list[float] = []
        with torch.no_grad():
            sec = time_epochs(lambda run=run, losses=losses: losses.append(run()), args.repeats, device)
        print(f"| torchmf sgd solver, optimizer={opt} | {n / sec / 1e6:.2f} | {losses[-1]:.4f} |", flush=True)
    if not args.skip_seed:
        epoch = seed_loop(users, items, values, args.users, args.items, args.factors, 256, device)
        sec = time_epochs(epoch, 1, device)
        print(f"| seed autograd loop (MSELoss + optim.SGD, batch 256) | {n / sec / 1e6:.2f} | |")


if __name__ == "__main__":
    main()
