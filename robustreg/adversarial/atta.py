"""ATTA (Zheng, Zhang, Gu, Lee, Prakash, "Efficient Adversarial Training with
Transferable Adversarial Examples", CVPR 2020)."""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..func import per_sample
from ..perturb import Bounds, clamp_to_box
from ..record import Record
from .base import AdversarialLoss, accuracy

log = logging.getLogger(__name__)
STORAGE = ("input", "cpu")
_UNSET = object()
RESET_RENAMED = (
    "ATTA's reset= (the reset period in epochs) is now reset_every= (reg.reset_every), so that it does "
    "not collide with FreeAT.reset(); the old name will be removed"
)


class ATTA(AdversarialLoss):
    """Adversarial training with perturbations carried across epochs, per sample.

    Adversarial perturbations transfer between the models of consecutive epochs, so ATTA keeps
    each training sample's perturbation δ_i and starts the next epoch's attack on that sample
    from it: a few PGD steps (ATTA-k, k = ``steps``) then reach the strength of a long attack.
    Per call, for the batch of dataset indices ``index``::

        δ_0 = stored δ_i (a sample not seen since the last reset: uniform in the ball, or 0)
        δ   = PGD-k on CE(f(x + δ), y) from δ_0,   stored δ_i ← δ,   loss = CE(f(x + δ), y)

    Every ``reset_every`` epochs (``reg.set_epoch(epoch)`` tells the epoch, as a sampler's
    ``set_epoch``) all stored perturbations are forgotten; ``reset_every=None`` never resets.
    ``Amata`` anneals ``reset_every`` too (a short period early).

    Memory: one perturbation per training sample, ``dataset_size × x[0].numel()`` values of x's
    dtype (:attr:`memory_bytes`): 188 MB for MNIST's 60,000 images in float32, 614 MB for
    CIFAR-10's 50,000. ``storage="input"`` keeps them on x's device (fast), ``"cpu"`` in host
    memory (rows are copied to x's device and back each batch). The perturbation is stored in
    the frame of x as passed: with random crops or flips between epochs it no longer lines up
    with the image (the ATTA paper re-applies the augmentation to δ); pass the same view of a
    sample every epoch, or accept the weaker transfer.

    Args:
        model: a classifier returning logits ``(B, C)``.
        dataset_size: number of training samples; ``index`` values lie in ``[0, dataset_size)``.
        eps: threat-model radius (8/255).
        alpha: PGD step size (2/255).
        steps: PGD steps per batch, k (1: ATTA-1). ``steps=0`` is allowed: no ascent step, each
            sample's loss is taken at its start (its stored perturbation, or a fresh start,
            which is then stored); ``reg.last.steps`` shows 0.
        norm: ``"linf"`` or ``"l2"``.
        random_start: a sample's first perturbation (after a reset) is uniform in the ball
            (else 0).
        bounds: valid input box, ``None`` for unbounded inputs.
        bn: BatchNorm policy of the attack passes (``"eval"``, as the official code).
        reset_every: forget every perturbation at epochs 0, r, 2r, … for ``reset_every = r``;
            ``None``: never. (``reset=`` is its deprecated name: a ``DeprecationWarning``.)
        storage: ``"input"`` (x's device) or ``"cpu"``.

    ``reg.last.metrics``: ``loss``, ``adv_acc`` and ``carried`` (fraction of the batch that
    started from a stored perturbation).

    Example:
        >>> reg = ATTA(model, len(train_set), eps=0.3, alpha=0.01, steps=1)
        >>> for epoch in range(epochs):
        ...     reg.set_epoch(epoch)
        ...     for x, y, index in indexed_loader:      # a dataset that also returns the index
        ...         loss = reg(x, y, index); opt.zero_grad(); loss.backward(); opt.step()
    """

    early_knob = "reset_every"

    def __init__(
        self,
        model: nn.Module,
        dataset_size: int,
        *,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 1,
        norm: str = "linf",
        random_start: bool = True,
        bounds: Bounds = (0.0, 1.0),
        bn: str = "eval",
        reset_every: int | None = None,
        storage: str = "input",
        reset: int | object | None = _UNSET,
    ) -> None:
        if reset is not _UNSET:
            if reset_every is not None:
                raise TypeError("pass reset_every= only (reset= is its deprecated name)")
            warnings.warn(RESET_RENAMED, DeprecationWarning, stacklevel=2)
            reset_every = reset  # type: ignore[assignment]
        self.dataset_size = dataset_size
        self.reset_every = reset_every
        self.storage = storage
        self.epoch = 0
        self._memory: Tensor | None = None  # (N, *sample shape) stored perturbations
        self._seen: Tensor | None = None  # (N,) bool: carries a perturbation since the last reset
        self._reset_at = 0  # the epoch of the last reset
        super().__init__(
            model, eps=eps, alpha=alpha, steps=steps, norm=norm,
            random_start=random_start, bounds=bounds, bn=bn,
        )  # fmt: skip

    def _check_config(self) -> None:
        super()._check_config()
        _checks.count("dataset_size", self.dataset_size, minimum=1)
        if self.reset_every is not None:
            _checks.count("reset_every", self.reset_every, minimum=1)
        if self.storage not in STORAGE:
            raise ValueError(f"storage must be one of {STORAGE}, got {self.storage!r}")
        if self._memory is not None and self._memory.shape[0] != self.dataset_size:
            raise ValueError(
                f"dataset_size changed from {self._memory.shape[0]} to {self.dataset_size} after perturbations "
                "were stored; call reg.clear() to start over with the new dataset"
            )

    # -- state ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Tell the engine the epoch; stored perturbations are forgotten once ``reset_every``
        epochs have passed since the last reset (at epochs 0, r, 2r, … for a fixed period r;
        a period changed on the way, as Amata does, counts from the last reset)."""
        epoch = _checks.count("epoch", epoch)
        if epoch < self.epoch:  # resumed or restarted: count periods from here
            self._reset_at = epoch
        self.epoch = epoch
        if self.reset_every is not None and epoch - self._reset_at >= self.reset_every:
            self._reset_at = epoch
            if self._seen is not None:
                self._seen.zero_()
            log.debug("ATTA: perturbations reset at epoch %d", epoch)

    def state_dict(self) -> dict[str, object]:
        """The stored perturbations and the reset clock, for checkpoints (``accelerator.save_state``
        through ``register_for_checkpointing``): resuming from it continues exactly."""
        return {"memory": self._memory, "seen": self._seen, "epoch": self.epoch, "reset_at": self._reset_at}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`'s output (the perturbations stay on the device they were saved from
        until the next call moves them)."""
        memory, seen = state["memory"], state["seen"]
        if memory is not None and (not isinstance(memory, Tensor) or memory.shape[0] != self.dataset_size):
            raise ValueError(f"state['memory'] must hold dataset_size = {self.dataset_size} perturbations")
        if memory is not None:
            _checks.finite("state['memory']", memory)
        self._memory, self._seen = memory, seen
        self.epoch, self._reset_at = int(state["epoch"]), int(state["reset_at"])

    def remember(self, index: Tensor, delta: Tensor) -> None:
        """Store ``delta`` ``(B, ...)`` as the perturbations of the samples ``index`` ``(B,)``, as a call
        would have. For several processes: each stores only the rows it attacked, so gather
        ``(index, reg.memory[index])`` from all of them and ``remember`` the lot everywhere."""
        if not isinstance(delta, Tensor) or not delta.is_floating_point() or delta.dim() < 2:
            raise TypeError("delta must be a floating-point tensor (B, ...) of perturbations")
        index = self._check_index(index, delta.shape[0])
        _checks.finite("delta", delta)
        memory, seen = self._allocate(delta.detach())
        rows = index.to(memory.device)
        memory[rows] = delta.detach().to(memory)
        seen[rows] = True

    def clear(self) -> None:
        """Free the stored perturbations (the next call allocates them again)."""
        self._memory = self._seen = None

    @property
    def memory(self) -> Tensor | None:
        """The stored perturbations ``(dataset_size, ...)``, or ``None`` before the first call."""
        return self._memory

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the stored perturbations (0 before the first call)."""
        return 0 if self._memory is None else self._memory.numel() * self._memory.element_size()

    def _allocate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._memory is not None and self._memory.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"x's sample shape {tuple(x.shape[1:])} differs from the stored perturbations' "
                f"{tuple(self._memory.shape[1:])}; call reg.clear() to start over"
            )
        device = x.device if self.storage == "input" else torch.device("cpu")
        if self._memory is None or self._memory.device != device:
            if self._memory is None:
                self._memory = torch.zeros((self.dataset_size, *x.shape[1:]), dtype=x.dtype, device=device)
                self._seen = torch.zeros(self.dataset_size, dtype=torch.bool, device=device)
            else:  # storage changed between calls: move what is stored
                self._memory, self._seen = self._memory.to(device), self._seen.to(device)
        return self._memory, self._seen

    @property
    def reset(self) -> int | None:
        """Deprecated name of :attr:`reset_every` (a ``DeprecationWarning``)."""
        warnings.warn(RESET_RENAMED, DeprecationWarning, stacklevel=2)
        return self.reset_every

    @reset.setter
    def reset(self, value: int | None) -> None:
        warnings.warn(RESET_RENAMED, DeprecationWarning, stacklevel=2)
        self.reset_every = value

    # -- calling -------------------------------------------------------------------------
    def __call__(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor:
        """The ATTA loss on the batch ``(x, y)`` of dataset indices ``index`` ``(B,)`` (required)."""
        if index is None:
            raise TypeError("ATTA needs each sample's dataset index: call reg(x, y, index)")
        x, y, classes = self._checked(x, y)
        index = self._check_index(index, x.shape[0])
        self._num_classes = classes  # cached once the whole batch has passed
        loss, record = self._indexed_loss(x, y, index)
        self.last = self._stamped(record)
        return loss

    def check_inputs(self, *batch: Tensor) -> None:
        """Run every check a call ``reg(x, y, index)`` makes, changing nothing."""
        if len(batch) != 3:
            raise TypeError(f"ATTA is called with (x, y, index), got {len(batch)} arguments")
        super().check_inputs(*batch)
        x = batch[0]
        if self._memory is not None and self._memory.shape[1:] != x.shape[1:]:
            self._allocate(x)  # raises: the stored perturbations have another sample shape

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Record]:
        raise TypeError("ATTA needs each sample's dataset index: call reg(x, y, index)")

    def _check_index(self, index: object, batch: int) -> Tensor:
        index = _checks.integer_vector("index", index, batch, "dataset indices")
        lo, hi = (int(v) for v in torch.stack(index.aminmax()))  # one device sync
        if lo < 0 or hi >= self.dataset_size:
            raise ValueError(
                f"index holds values in [{lo}, {hi}], outside [0, dataset_size) = [0, {self.dataset_size}); "
                "pass each sample's position in the training set (and the set's size as dataset_size)"
            )
        if torch.unique(index).numel() != index.numel():
            raise ValueError("index holds duplicates: each sample of a batch needs its own stored perturbation")
        return index.long()

    def _indexed_loss(self, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, Record]:
        x0 = x.detach()
        memory, seen = self._allocate(x0)
        rows = index.to(memory.device)
        carried = seen[rows].to(x0.device)  # (B,)
        stored = memory[rows].to(x0)  # (B, ...)
        fresh = self._start(x0)
        mask = per_sample(carried, x0)
        start = torch.where(mask, clamp_to_box(x0, self.ball.project(stored, self.eps), self.bounds), fresh)
        delta = self._attack(self._ce_sum(y), x0, start)
        # A non-finite δ (from a non-finite gradient: the model overflowed) is never stored: those
        # samples keep their previous perturbation; the returned loss shows the problem.
        finite = torch.isfinite(delta).flatten(1).all(1).to(memory.device)  # (B,), no device sync
        memory[rows] = torch.where(per_sample(finite, x0), delta.to(memory), memory[rows])
        seen[rows] = seen[rows] | finite
        x_adv = x + delta
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits, y)
        metrics = {"loss": loss.detach(), "adv_acc": accuracy(logits, y), "carried": carried.float().mean()}
        return loss, Record(x_adv.detach(), metrics)
