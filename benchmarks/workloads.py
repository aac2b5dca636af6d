"""The benchmarks' workloads: a network with the input it is trained on and its threat model, the
loss object of a training method on it, and one training step on a device (``torch.autocast``,
``torch.compile``, channels-last), timed with the device's own clock, with the ATen operations (and
on CUDA the kernels) it issues counted.

Used by ``step_cost.py``, ``peak_memory.py`` and ``device_check.py``. Nothing here changes a loss
object: each is built as a user builds it, on the (possibly compiled) model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import robustreg
from robustreg.bayes import BAL, SGLDAdversary
from robustreg.charts import VAE, MLPAutoEncoder
from robustreg.models import (
    BALCNN,
    MLP,
    ConvLarge,
    PreActResNet,
    SmallCNN,
    WideResNet,
    preact_resnet18,
    wide_resnet34_10,
)

Objective = Callable[[Tensor, Tensor], Tensor]
LR, MOMENTUM = 0.01, 0.9


@dataclass(frozen=True)
class Network:
    """A benchmark network: how to build it, one input's shape, its classes, and the threat model
    and attack step of its data set (the papers' settings)."""

    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    classes: int
    eps: float
    alpha: float
    bounds: tuple[float, float] | None
    data: str
    #: the same family at a size for smoke tests (``None``: the network itself is small)
    small: Callable[[], nn.Module] | None = None


def _cifar(
    build: Callable[[], nn.Module], small: Callable[[], nn.Module] | None = None, data: str = "CIFAR-10"
) -> Network:
    """A network of 3×32×32 images in [0, 1] (CIFAR-10, SVHN): ε = 8/255, α = 2/255."""
    return Network(build, (3, 32, 32), 10, 8 / 255, 2 / 255, (0.0, 1.0), data, small)


NETWORKS: dict[str, Network] = {
    "smallcnn": Network(SmallCNN, (1, 28, 28), 10, 0.3, 0.01, (0.0, 1.0), "MNIST"),
    "preact-resnet18": _cifar(preact_resnet18, small=lambda: PreActResNet(blocks=(1, 1, 1, 1))),
    "wrn-34-10": _cifar(wide_resnet34_10, small=lambda: WideResNet(depth=10, widen=1)),
    "conv-large": _cifar(ConvLarge, data="CIFAR-10 / SVHN"),
    "mlp": Network(lambda: MLP(50, 2, hidden=(64, 64)), (50,), 2, 0.25, 0.0625, None, "two rings + 48 nuisance"),
    # Bayesian adversarial learning's MNIST network and its training radius (recipes/bal.py)
    "bal-cnn": Network(BALCNN, (1, 28, 28), 10, 0.1, 2.5 * 0.1 / 15, (0.0, 1.0), "MNIST"),
}


class _WithoutLinearize:
    """A chart's encode and decode only: TNAR computes its Jacobian products with torch.func."""

    def __init__(self, chart: nn.Module) -> None:
        self.encode, self.decode = chart.encode, chart.decode


def _chart(net: Network) -> nn.Module:
    """TNAR's chart for ``net``'s inputs: a convolutional VAE (latent 20, width 16: the chart of
    ``benchmarks/fashion_ssl.py``) for images, an MLP autoencoder for vectors; random weights,
    which do not change the cost."""
    chart = VAE(net.shape, latent=20, width=16) if len(net.shape) == 3 else MLPAutoEncoder(net.shape, 2)
    return chart.eval().requires_grad_(False)


def _with_ce(model: nn.Module, reg: Any) -> Objective:
    """Cross-entropy plus a semi-supervised regulariser on the same batch, the clean logits shared
    (a step where every example is also an unlabeled one)."""

    def objective(x: Tensor, y: Tensor) -> Tensor:
        logits = model(x)
        return F.cross_entropy(logits, y) + reg(x, logits=logits)

    return objective


def _tnar(model: nn.Module, net: Network, func: bool = False, **options: Any) -> Objective:
    chart = _chart(net)
    used = _WithoutLinearize(chart) if func else chart
    reg = robustreg.TNAR(model, used, eps_tangent=2.0, eps_normal=2.0, tangent="manifold", **options)
    return _with_ce(model, reg)


def _yopo(m: int, n: int) -> Callable[[nn.Module, Network], Objective]:
    def build(model: nn.Module, net: Network) -> Objective:
        return robustreg.YOPO(
            model, m=m, n=n, eps=net.eps, alpha=net.alpha, bounds=net.bounds, first_layer=model.layer_one
        )

    return build


def _bal(chains: int) -> Callable[[nn.Module, Network], Objective]:
    """One BAL iteration (S_θ = ``chains``, M = 15 Langevin steps, S_x̃ = 1), recipes/bal.py's
    defaults. BAL steps its own chains (copies of the model); what it returns to the trainer is a
    zero loss on the model, whose backward and SGD step cost a few microseconds."""

    def build(model: nn.Module, net: Network) -> Objective:
        adversary = SGLDAdversary(steps=15, step_size=0.01, bounds=net.bounds)
        bal = BAL(model, data_size=60_000, chains=chains, adversary=adversary, lr=0.03, seed=0)

        def objective(x: Tensor, y: Tensor) -> Tensor:
            return bal.step(x, y) + 0 * sum(p.sum() for p in model.parameters())

        return objective

    return build


def _ssl(reg: Callable[[nn.Module, Network], Any] | None) -> Callable[[nn.Module, Network], Objective]:
    """A semi-supervised step on one batch: its first fifth labeled (32 of 160, the VAT and TNAR
    papers' 32 + 128), the rest unlabeled, one forward of both; CE on the labeled logits plus the
    regulariser on the unlabeled ones (``reg=None``: CE alone)."""

    def build(model: nn.Module, net: Network) -> Objective:
        regulariser = None if reg is None else reg(model, net)

        def objective(x: Tensor, y: Tensor) -> Tensor:
            n = max(1, len(x) // 5)
            logits = model(x)
            loss = F.cross_entropy(logits[:n], y[:n])
            if regulariser is not None:
                loss = loss + regulariser(x[n:], logits=logits[n:])
            return loss

        return objective

    return build


def _tnar_reg(model: nn.Module, net: Network) -> Any:
    return robustreg.TNAR(model, _chart(net), eps_tangent=2.0, eps_normal=2.0, tangent="manifold")


#: method -> builder of its loss object on a model of a network, in report order. PGD, TRADES and
#: YOPO step by the network's α; Fast-AT and Free-AT use their default steps (1.25ε and ε).
METHODS: dict[str, Callable[[nn.Module, Network], Objective]] = {
    "natural": lambda model, net: lambda x, y: F.cross_entropy(model(x), y),
    "pgd10": lambda model, net: robustreg.PGDAT(model, eps=net.eps, alpha=net.alpha, steps=10, bounds=net.bounds),
    "pgd40": lambda model, net: robustreg.PGDAT(model, eps=net.eps, alpha=net.alpha, steps=40, bounds=net.bounds),
    "pgd15": lambda model, net: robustreg.PGDAT(model, eps=net.eps, alpha=net.alpha, steps=15, bounds=net.bounds),
    "fast": lambda model, net: robustreg.FastAT(model, eps=net.eps, bounds=net.bounds),
    "free": lambda model, net: robustreg.FreeAT(model, eps=net.eps, bounds=net.bounds),
    "trades10": lambda model, net: robustreg.TRADES(model, eps=net.eps, alpha=net.alpha, steps=10, bounds=net.bounds),
    "yopo5-3": _yopo(5, 3),
    "yopo3-5": _yopo(3, 5),
    "yopo5-10": _yopo(5, 10),
    "vat": lambda model, net: _with_ce(model, robustreg.VAT(model, eps=2.0)),
    "vat-hvp": lambda model, net: _with_ce(model, robustreg.VAT(model, eps=2.0, method="hvp")),
    "tnar": _tnar,
    "tnar-func": lambda model, net: _tnar(model, net, func=True),
    "tnar-penalty": lambda model, net: _tnar(model, net, normal="penalty", zeta=0.1),
    "tnar-residual": lambda model, net: _tnar(model, net, normal_start="residual"),
    "tnar-official": lambda model, net: _tnar(model, net, normal="official", normalize="official"),
    "ssl-ce": _ssl(None),
    "ssl-vat": _ssl(lambda model, net: robustreg.VAT(model, eps=2.0)),
    "ssl-tnar": _ssl(_tnar_reg),
    "bal1": _bal(1),
    "bal3": _bal(3),
    "bal5": _bal(5),
    "bal10": _bal(10),
}


@dataclass(frozen=True)
class Setup:
    """Where and how a step runs: the device, autocast (``None``, ``"bf16"`` or ``"fp16"``; fp16
    with a gradient scaler), ``torch.compile`` of the model, channels-last memory format."""

    device: torch.device
    amp: str | None = None
    compile: bool = False
    channels_last: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp or "")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": str(self.device), "amp": self.amp, "compile": self.compile}
        out["channels_last"] = self.channels_last
        if self.device.type == "cuda":
            out["device_name"] = torch.cuda.get_device_name(self.device)
            out["cuda"] = torch.version.cuda
            out["cudnn"] = torch.backends.cudnn.version()
        return out


class Trainer:
    """One method's model, SGD optimizer (lr 0.01, momentum 0.9) and loss object, built once (the
    model in train mode, from ``seed``, so that every method starts from the same weights) and
    stepped repeatedly; ``kernels`` is the :func:`robustreg.devices.kernels` mode of its steps,
    ``small`` builds the network's smoke-test size (:attr:`Network.small`)."""

    def __init__(
        self, method: str, network: str, setup: Setup, seed: int, *, kernels: str = "auto", small: bool = False
    ) -> None:
        net = NETWORKS[network]
        self.kernels = kernels  # robustreg.devices.kernels mode of every step
        torch.manual_seed(seed)
        model = (net.small if small and net.small is not None else net.build)().to(setup.device).train()
        if setup.channels_last and len(net.shape) == 3:
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        if setup.compile:
            model = torch.compile(model)
        self.name, self.setup, self.model = method, setup, model
        self.objective = METHODS[method](model, net)
        scaled = setup.amp == "fp16" and setup.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(setup.device.type) if scaled else None

    def _step(self, x: Tensor, y: Tensor) -> None:
        setup = self.setup
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(setup.device.type, dtype=setup.dtype, enabled=setup.amp is not None)
        with robustreg.devices.kernels(self.kernels), autocast:
            loss = self.objective(x, y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def step(self, x: Tensor, y: Tensor) -> float:
        """One training step on ``(x, y)``; its wall time in seconds (CUDA: between two events
        recorded on the stream, after synchronising)."""
        if self.setup.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.setup.device)
            start.record()
            self._step(x, y)
            end.record()
            torch.cuda.synchronize(self.setup.device)
            return start.elapsed_time(end) / 1000
        begin = time.perf_counter()
        self._step(x, y)
        return time.perf_counter() - begin

    def count(self, x: Tensor, y: Tensor) -> dict[str, int | None]:
        """The ATen operations one step dispatches (forward, backward and optimizer), and on CUDA
        the kernels it launches (``None`` elsewhere). Not counted under ``torch.compile``
        (``None``): with a Python dispatch mode active the step would not run the compiled graph."""
        if self.setup.compile:
            return {"aten_ops": None, "cuda_kernels": None}
        counter = _OpCounter()
        with counter:
            self._step(x, y)
        kernels = None
        if self.setup.device.type == "cuda":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                self._step(x, y)
                torch.cuda.synchronize(self.setup.device)
            kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        return {"aten_ops": counter.count, "cuda_kernels": kernels}

    def peak_memory(self, x: Tensor, y: Tensor) -> float | None:
        """CUDA: the peak of allocated memory during one step, in MiB, beyond what was allocated
        before it (``None`` elsewhere: ``peak_memory.py`` measures the CPU, a process per method)."""
        if self.setup.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.setup.device)
        before = torch.cuda.memory_allocated(self.setup.device)
        torch.cuda.reset_peak_memory_stats(self.setup.device)
        self._step(x, y)
        torch.cuda.synchronize(self.setup.device)
        return (torch.cuda.max_memory_allocated(self.setup.device) - before) / 2**20


class _OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def make_batch(network: str, batch_size: int, setup: Setup, seed: int) -> tuple[Tensor, Tensor]:
    """A batch of ``network``'s input shape on the setup's device: images uniform in [0, 1] (two
    rings' vectors standard normal), labels uniform over the classes."""
    net = NETWORKS[network]
    gen = torch.Generator().manual_seed(seed)
    draw = torch.rand if net.bounds is not None else torch.randn
    x = draw(batch_size, *net.shape, generator=gen)
    y = torch.randint(0, net.classes, (batch_size,), generator=gen)
    x, y = x.to(setup.device), y.to(setup.device)
    if setup.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


@contextlib.contextmanager
def kernel_path(mode: str) -> Iterator[None]:
    """The device seam of the hand-written kernels (:func:`robustreg.devices.kernels`): ``auto``,
    ``on`` (forced, on every device) or ``off`` (the generic ``torch.func`` path)."""
    with robustreg.devices.kernels(mode):
        yield


def device(name: str) -> torch.device:
    """``cpu`` or ``cuda`` (refused, with the reason, when no GPU is visible)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no GPU (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device must be cpu or cuda, got {name!r}")
    return torch.device(name)
