"""DDP on CPU (gloo, 2 processes): the loss objects give the single-process gradients."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from robustreg import PGDAT, TRADES, YOPO, FastAT
from robustreg.bayes import BAL, SGLDAdversary
from robustreg.control import MSA

from .conftest import free_port

ENGINES = {
    "pgdat": lambda m: PGDAT(m, eps=0.1, alpha=0.03, steps=3, random_start=False, bounds=None),
    "fast": lambda m: FastAT(m, eps=0.1, random_start=False, bounds=None),
    "trades": lambda m: TRADES(m, eps=0.1, alpha=0.03, steps=3, bounds=None),
    "yopo": lambda m: YOPO(m, m=3, n=2, eps=0.1, alpha=0.03, random_start=False, bounds=None),
    "yopo-backprop": lambda m: YOPO(
        m, m=2, n=2, eps=0.1, alpha=0.03, random_start=False, bounds=None, first_layer_grad="backprop"
    ),
    "yopo-trades": lambda m: YOPO(m, m=2, n=2, eps=0.1, alpha=0.03, objective="trades", bounds=None),
}
TRADES_START = {"trades", "yopo-trades"}  # engines whose start is 0.001·N(0, I)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    grads = {}
    try:
        x, y = batch()
        share = slice(rank * 4, rank * 4 + 4)  # each rank takes half of the global batch
        for name, make in ENGINES.items():
            torch.manual_seed(100)  # TRADES' 0.001·N(0, I) start: the same draw per sample
            noise = 0.001 * torch.randn_like(x)
            model = DDP(make_model())
            reg = make(model)
            if name in TRADES_START:  # each rank takes its share of one global draw
                reg._start = lambda x0, noise=noise: noise[share]
            for _ in range(2):  # DDP must be fine with repeated calls and inner passes
                model.zero_grad()
                reg(x[share], y[share]).backward()
            grads[name] = [p.grad for p in model.parameters()]
        model = DDP(make_model())  # MSA: the update averages the ranks' gradients itself
        msa = MSA(model, beta=2.0)
        for _ in range(2):
            msa.step(x[share], y[share])
        grads["msa"] = [p.detach().clone() for p in model.parameters()]
        bal = make_bal()  # BAL: each chain's gradient averaged over the ranks, the same noise on both
        for _ in range(2):
            bal.step(x[share], y[share])
        grads["bal"] = [p.detach().clone() for m in bal.chains for p in m.parameters()]
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_grads():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "grads.pt")
        mp.spawn(worker, args=(2, free_port(), out), nprocs=2, join=True)
        return torch.load(out)


@pytest.mark.parametrize("name", ENGINES)
def test_ddp_gradients_equal_single_process(name, ddp_grads):
    torch.manual_seed(100)
    x, y = batch()
    noise = 0.001 * torch.randn_like(x)
    model = make_model()
    reg = ENGINES[name](model)
    if name in TRADES_START:
        reg._start = lambda x0: noise
    reg(x, y).backward()
    for a, b in zip(ddp_grads[name], (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def make_bal() -> BAL:
    adversary = SGLDAdversary(steps=2, step_size=0.05, temperature=0.0, bounds=None)  # deterministic data
    return BAL(make_model(), data_size=8, chains=2, adversary=adversary, lr=0.05, friction=3.0, temperature=1.0,
               seed=7)  # fmt: skip


def test_ddp_bal_chains_equal_single_process(ddp_grads):
    x, y = batch()
    bal = make_bal()
    for _ in range(2):
        bal.step(x, y)
    mine = [p.detach() for m in bal.chains for p in m.parameters()]
    for a, b in zip(ddp_grads["bal"], mine, strict=True):
        torch.testing.assert_close(a, b)


def test_ddp_msa_equals_single_process(ddp_grads):
    x, y = batch()
    model = make_model()
    msa = MSA(model, beta=2.0)
    for _ in range(2):
        msa.step(x, y)
    for a, b in zip(ddp_grads["msa"], model.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach())
