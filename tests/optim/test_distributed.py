"""QASSO under DistributedDataParallel: two gloo processes on the CPU, each with its own data shard,
take the same pruning decisions and end with identical weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import geta

WORLD = 2
STEPS = 30


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(),
                         nn.Linear(10, 3))


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        example = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
        g = geta.GETA(_model(), example, quantize="weights+activations")
        ddp = DistributedDataParallel(g.model)
        opt = g.qasso("sgd", lr=0.05, momentum=0.9, lr_quant=1e-3, target_sparsity=0.5, total_steps=STEPS)
        generator = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
        for _ in range(STEPS):
            x = torch.randn(8, 6, generator=generator)
            y = torch.randint(0, 3, (8,), generator=generator)
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        # parameters only: buffers (running statistics) follow each rank's last batch until DDP broadcasts them
        parameters = {name: p.detach() for name, p in g.model.named_parameters()}
        torch.save({"state": parameters, "pruned": opt.pruned, "zero": g.groups.zero_mask()},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_take_the_same_decisions_and_end_identical(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    first, second = results
    assert torch.equal(first["pruned"], second["pruned"]) and torch.equal(first["zero"], first["pruned"])
    assert int(first["pruned"].sum()) == round(0.5 * len(first["pruned"]))
    assert first["state"].keys() == second["state"].keys()
    for key in first["state"]:
        assert torch.equal(first["state"][key], second["state"][key]), key


def test_a_model_wrapped_for_data_parallelism_is_refused_with_the_order_to_use(tmp_path: Path) -> None:
    with pytest.raises(geta.ModelError,
                       match=r"wrapped in DataParallel; pass the module itself.*DataParallel\(g.model\)"):
        geta.GETA(nn.DataParallel(_model()), torch.randn(8, 6))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(geta.ModelError, match="wrapped in DistributedDataParallel; pass the module itself"):
            geta.GETA(DistributedDataParallel(_model()), torch.randn(8, 6))
    finally:
        dist.destroy_process_group()
