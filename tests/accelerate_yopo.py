"""Run by test_accelerate_launch.py as ``accelerate launch --multi_gpu --num_processes 2 accelerate_yopo.py OUT``:
YOPO on an accelerate-prepared (DDP) model, each process with its half of one global batch."""

import sys

import torch
from accelerate import Accelerator
from torch import nn

from robustreg import YOPO


def model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    g = torch.Generator().manual_seed(1)
    return model, torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)


def main(out: str) -> None:
    acc = Accelerator(cpu=True)
    model, x, y = model_and_batch()
    ddp = acc.prepare(model)
    share = slice(acc.process_index * 4, acc.process_index * 4 + 4)
    reg = YOPO(ddp, m=3, n=2, eps=0.2, alpha=0.08, random_start=False, first_layer=model[0])
    acc.backward(reg(x[share], y[share]))
    if acc.is_main_process:
        torch.save({"world": acc.num_processes, "grads": [p.grad for p in model.parameters()]}, out)
    # Both ranks leave together and tear gloo down before exit: a rank that exits while its peer
    # still holds the process group aborts in gloo's destructor ("terminate called without an
    # active exception"), seen on a loaded machine.
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
