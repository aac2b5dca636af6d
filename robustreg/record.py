"""The one record type of robustreg's loss objects and optimisers: what the last call used.

Every adversarial engine, semi-supervised regulariser, :class:`robustreg.control.MSA` and
:class:`robustreg.bayes.BAL` sets ``obj.last`` to a :class:`Record` after a call that succeeded
(``None`` before the first one, and unchanged by a call that raised or, for BAL, by a NaN step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class Record:
    """What the last call used.

    - ``x_adv``: the adversarial batch (detached) of an adversarial engine, ``None`` otherwise;
    - ``metrics``: 0-dim detached tensors by name (kept as tensors so that recording them never
      forces a device sync; :meth:`as_dict` converts them to floats for logging, ``record[name]``
      one of them);
    - ``steps``: the number of ascent steps an adversarial call took (the engine's ``steps``;
      YOPO's ``n`` per pass), ``None`` for Free-AT, whose perturbation moves in the user's
      backward, and for the other families. ``steps == 0`` means no ascent at all: ``x_adv`` is
      the attack's start and the loss is the loss there; ``repr`` says so;
    - ``perturbations``: the perturbations of a semi-supervised call by name (detached), also
      readable as attributes (``record.r_adv``).
    """

    x_adv: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    steps: int | None = None
    perturbations: dict[str, Tensor] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.items()}

    def __getitem__(self, key: str) -> float:
        return float(self.metrics[key])

    def __getattr__(self, name: str) -> Tensor:
        if name.startswith("__") or name in ("x_adv", "metrics", "steps", "perturbations"):
            raise AttributeError(name)  # not set yet (copy, unpickling): no recursion
        try:
            return self.perturbations[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        parts = []
        if self.x_adv is not None:
            parts.append(f"x_adv=<{tuple(self.x_adv.shape)} {self.x_adv.dtype}>")
        parts += [f"{k}=<{tuple(v.shape)}>" for k, v in self.perturbations.items()]
        if self.steps is not None:
            parts.append(
                f"steps={self.steps}" + (" (no ascent step: x_adv is the attack's start)" if self.steps == 0 else "")
            )
        metrics = ", ".join(f"{k}={float(v):.4g}" for k, v in self.metrics.items())
        return f"Record({', '.join([*parts, f'metrics={{{metrics}}}'])})"
