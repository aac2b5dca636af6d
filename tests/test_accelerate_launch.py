"""Two processes on CPU through ``accelerate launch``: YOPO's gradients equal the single-process
ones on the same global batch.

``accelerate launch --cpu --num_processes 2`` starts one process in accelerate 1.x unless MPI is
configured; ``--multi_gpu --num_processes 2`` starts two through torchrun, and the script's
``Accelerator(cpu=True)`` then runs them as MULTI_CPU with gloo."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from robustreg import YOPO

from .accelerate_yopo import model_and_batch
from .conftest import free_port

SCRIPT = Path(__file__).with_name("accelerate_yopo.py")


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_yopo_under_accelerate_launch_matches_one_process(tmp_path):
    out = tmp_path / "grads.pt"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
           str(SCRIPT), str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=SCRIPT.parents[1])
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(out)
    assert got["world"] == 2
    model, x, y = model_and_batch()
    reg = YOPO(model, m=3, n=2, eps=0.2, alpha=0.08, random_start=False, first_layer=model[0])
    reg(x, y).backward()
    for a, b in zip(got["grads"], (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)
