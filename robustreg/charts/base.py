"""The chart contract: what :class:`robustreg.TNAR` needs from a chart of the data manifold, and
the one way every chart is linearised.

- :class:`Chart`: batched ``encode(x) -> z`` and ``decode(z) -> x``, or a *local* chart's
  ``at(x) -> (z, decode)``.
- :func:`chart_at`: a chart's coordinates, decoder and (optional) own linearisation at a batch.
- :func:`linearization`: ``decode(z)`` and the Jacobian products ``v ↦ Jv``, ``u ↦ Jᵀu`` at z,
  ``J = ∂decode/∂z``: the chart's own ``linearize(z)`` (exact products written out layer by layer
  in :mod:`robustreg.charts.linearize`, for speed) or, for any other chart, the generic ones of
  :class:`FuncLinearization` (``torch.func``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.func import jvp, vjp

from ..devices import uses_kernels
from ..func import Operator, missing_double_backward

# a chart's optional ``linearize(z) -> (decode(z), v ↦ Jv, u ↦ Jᵀu)``
Linearize = Callable[[Tensor], tuple[Tensor, Operator, Operator]]


class Linearization(NamedTuple):
    """``decode(z)`` and the two exact Jacobian products at z: ``jvp(v) = J v``, ``vjp(u) = Jᵀ u``."""

    point: Tensor
    jvp: Callable[[Tensor], Tensor]
    vjp: Callable[[Tensor], Tensor]


@runtime_checkable
class Chart(Protocol):
    """A chart of the data manifold: batched ``encode(x) -> z`` and ``decode(z) -> x``.

    A *local* chart, whose decoder depends on the point (the Localized GAN's ``G(x, ·)``), may
    define ``at(x) -> (z, decode)`` instead: the coordinates of x and the decoder of its
    neighbourhood. :class:`TNAR` uses ``at`` when a chart has it.

    A chart (or the decoder a local chart returns) may also define ``linearize(z) -> (decode(z),
    v ↦ Jv, u ↦ Jᵀu)``, exact products with ``J = ∂decode/∂z`` at z; :class:`TNAR` then uses them
    instead of the generic ``torch.func`` ones (:class:`FuncLinearization`; the charts of
    :mod:`robustreg.charts` have it, for speed).
    """

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


def chart_at(chart: object, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor], Linearize | None]:
    """``(z, decode, linearize)`` of ``chart`` at the batch ``x``: ``chart.at(x)`` for a local
    chart, otherwise ``(chart.encode(x), chart.decode)``; z is computed without gradients.
    ``linearize`` is the decoder's (a local one's) or the chart's ``linearize`` method, None when
    it has none."""
    with torch.no_grad():
        if callable(getattr(chart, "at", None)):
            z, decode = chart.at(x)
            owner, decoder = decode, "__call__"
        else:
            z, decode = chart.encode(x), chart.decode
            owner, decoder = chart, "decode"
    linearize = getattr(owner, "linearize", None)
    if not callable(linearize) or _defined_in(owner, "linearize") is not _defined_in(owner, decoder):
        linearize = None  # none, or a subclass changed the decoder and inherited a linearize of another one
    return (z.detach() if isinstance(z, Tensor) else z), decode, linearize


def _defined_in(obj: object, name: str) -> type | None:
    """The class in ``type(obj)``'s MRO that defines ``name`` (None: an instance attribute or none)."""
    return next((cls for cls in type(obj).__mro__ if name in vars(cls)), None)


class FuncLinearization:
    """The generic Jacobian products of any decoder at z, by ``torch.func``.

    ``Jᵀu`` is the pullback of one ``vjp`` of the decoder (its linearisation is built once).
    ``Jv`` is the transpose of that linear pullback: the ``vjp`` of ``u ↦ Jᵀu``, again built
    once. It is exact (the same linear map) and, on the convolutional decoders measured, about
    3× cheaper than a forward-mode ``jvp``, which recomputes the decoder's primal pass every
    time. A decoder whose backward cannot be differentiated falls back to ``jvp``.

    ``check(point)``, when given, sees ``decode(z)`` before ``vjp`` looks at it.
    """

    def __init__(
        self, decode: Callable[[Tensor], Tensor], z: Tensor, *, check: Callable[[Tensor], None] | None = None
    ) -> None:
        self.decode, self.z = decode, z

        def checked(z: Tensor) -> Tensor:  # the output is checked before vjp looks at it
            out = decode(z)
            if check is not None:
                check(out)
            return out

        with torch.enable_grad():
            point, self._pullback = vjp(checked, z)
            self.point = point.detach()  # decode(z)
            try:
                _, self._transpose = vjp(lambda u: self._pullback(u)[0], torch.zeros_like(self.point))
            except (NotImplementedError, RuntimeError) as err:
                if not missing_double_backward(err):
                    raise
                self._transpose = None

    @property
    def jvp_mode(self) -> str:
        """How :meth:`jvp` computes ``J v``: ``"transpose"`` (the transposed pullback) or, for a
        decoder whose backward cannot be differentiated, ``"forward"`` (``torch.func.jvp``)."""
        return "forward" if self._transpose is None else "transpose"

    def jvp(self, v: Tensor) -> Tensor:
        """``J v``."""
        if self._transpose is not None:
            try:
                with torch.enable_grad():
                    return self._transpose(v)[0]
            except (NotImplementedError, RuntimeError) as err:
                if not missing_double_backward(err):
                    raise  # a genuine error is never retried
                self._transpose = None  # a backward without a derivative: use forward mode from now on
        return jvp(self.decode, (self.z,), (v,))[1]

    def vjp(self, u: Tensor) -> Tensor:
        """``Jᵀ u``."""
        return self._pullback(u)[0]


def linearization(
    decode: Callable[[Tensor], Tensor],
    z: Tensor,
    linearize: Linearize | None = None,
    *,
    check: Callable[[Tensor], None] | None = None,
) -> Linearization | FuncLinearization:
    """``decode(z)`` and the products ``Jv``, ``Jᵀu`` at z: the chart's own ``linearize(z)`` (from
    :func:`chart_at`) when it has one and z is on a device of
    :data:`robustreg.devices.KERNEL_DEVICES` (its written-out products are kernels measured
    there), else :class:`FuncLinearization`. Either has ``point``, ``jvp`` and ``vjp``;
    ``check(point)`` sees ``decode(z)`` first."""
    if linearize is None or not uses_kernels(z):
        return FuncLinearization(decode, z, check=check)
    point, jvp_fn, vjp_fn = linearize(z)
    if check is not None:
        check(point)
    return Linearization(point, jvp_fn, vjp_fn)


#: What ``chart.save(path)`` says: the chart file format is deprecated for the saved-model directory.
SAVE_DEPRECATED = (
    "chart.save(path) writes the deprecated single-file chart format; save charts as models instead, "
    "robustreg.checkpoint.save_model(chart, directory) (safetensors + JSON, what recipes/chart.py "
    "writes), and read them with robustreg.charts.load_chart(directory)"
)


def save_chart_file(chart: torch.nn.Module, path: str | Path) -> None:
    """The deprecated single-file format of ``chart.save(path)``: ``{"kind", "config", "state"}``
    in a torch file (read back with ``weights_only``). Warns (:data:`SAVE_DEPRECATED`)."""
    warnings.warn(SAVE_DEPRECATED, DeprecationWarning, stacklevel=3)
    torch.save({"kind": chart.kind, "config": chart.config, "state": chart.state_dict()}, path)
