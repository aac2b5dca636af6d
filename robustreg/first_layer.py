"""The first layer f0 of a network f = g ∘ f0, and fast products with its input Jacobian.

YOPO (Zhang et al., NeurIPS 2019) updates the adversary with the first layer only: its inner
steps need ``∇_z ⟨p, f0(z)⟩ = J_{f0}(z)ᵀ p`` for a frozen co-state p, many times per batch.
For the layers networks start with this product has a closed form much cheaper than autograd:

- ``Linear``:           ``Jᵀp = p W``;
- ``Conv{1,2,3}d``:     ``Jᵀp = conv_transpose(p, W)`` (zero padding, numeric padding);
- a pointwise ``ReLU``/``LeakyReLU`` after it:  ``p ← p ⊙ σ'(pre-activation)``;
- a per-channel normalisation ``(x − μ)/σ``:     ``p ← p / σ``.

:class:`FirstLayer` recognises a module made of these (alone or in an ``nn.Sequential``) and
uses the closed forms; anything else falls back to ``torch.func.vjp``. When f0 is affine (no
activation), ``Jᵀp`` does not depend on z and :attr:`FirstLayer.affine` says so, so that a
caller computes it once.

:func:`find_first_layer` identifies f0 in a model by tracing one forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp

from .models import Normalize

_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)


def _leaves(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def _fast_conv(m: nn.Module) -> bool:
    return (
        isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and not isinstance(m.padding, str)
        and m.padding_mode == "zeros"
    )


class FirstLayer:
    """The first layer f0 of a model, with ``forward`` and the input-VJP ``Jᵀp``.

    Args:
        module: the module applied to the model's input. Its own forward is what the model
            runs; this class never changes it.
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"first_layer must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        leaves = _leaves(module)
        # The fast path: a chain of pieces whose input-VJP we know in closed form.
        ops = [m for m in leaves if not isinstance(m, nn.Identity)]
        fast = bool(ops) and all(isinstance(m, (nn.Linear, Normalize, *_ACTIVATIONS)) or _fast_conv(m) for m in ops)
        self.ops = ops if fast else None
        self.affine = fast and not any(isinstance(m, _ACTIVATIONS) for m in ops)
        self.params = dict(module.named_parameters())

    @property
    def fast(self) -> bool:
        """Whether ``Jᵀp`` uses the closed forms (else ``torch.func.vjp``)."""
        return self.ops is not None

    def __call__(self, z: Tensor) -> Tensor:
        return self.module(z)

    def input_vjp(self, z: Tensor, p: Tensor) -> Tensor:
        """``J_{f0}(z)ᵀ p``: the gradient of ``⟨p, f0(z)⟩`` with respect to z, detached."""
        with torch.no_grad():
            if self.ops is None:
                params = {k: v.detach() for k, v in self.params.items()}
                _, pullback = vjp(lambda t: functional_call(self.module, params, (t,)), z)
                return pullback(p)[0]
            return self._fast_vjp(z, p)

    def _fast_vjp(self, z: Tensor, p: Tensor) -> Tensor:
        # Forward through the pieces, keeping each input; only activations need theirs.
        inputs = []
        h = z
        for m in self.ops:
            inputs.append(h)
            h = m(h)
        for m, h_in in zip(reversed(self.ops), reversed(inputs), strict=True):
            p = _vjp_one(m, h_in, p)
        return p

    def param_grad(self, z: Tensor, p: Tensor) -> dict[str, Tensor]:
        """``∇_θ0 ⟨p, f0(z)⟩`` for every parameter θ0 of f0 (the YOPO Hamiltonian gradient)."""
        names = [k for k, v in self.params.items() if v.requires_grad]
        if not names:
            return {}
        with torch.enable_grad():
            out = self.module(z.detach())
            grads = torch.autograd.grad((out * p).sum(), [self.params[k] for k in names], allow_unused=True)
        return {k: g for k, g in zip(names, grads, strict=True) if g is not None}


def _vjp_one(m: nn.Module, h: Tensor, p: Tensor) -> Tensor:
    """The input-VJP of one known piece ``m`` at its input ``h``."""
    if isinstance(m, nn.ReLU):
        return p * (h > 0)
    if isinstance(m, nn.LeakyReLU):
        return torch.where(h > 0, p, m.negative_slope * p)
    if isinstance(m, Normalize):
        return p / m.std.to(p.dtype)
    if isinstance(m, nn.Linear):
        return p @ m.weight.to(p.dtype)
    # Convolution: the adjoint is the transposed convolution, with output_padding chosen so
    # that the result has the input's spatial size (strides can drop trailing rows).
    dims = h.dim() - 2
    w = m.weight.to(p.dtype)
    out_pad = []
    for i in range(dims):
        k = m.dilation[i] * (m.kernel_size[i] - 1) + 1
        full = (p.shape[2 + i] - 1) * m.stride[i] - 2 * m.padding[i] + k
        out_pad.append(h.shape[2 + i] - full)
    return _CONV_T[dims](
        p, w, stride=m.stride, padding=m.padding, output_padding=tuple(out_pad), groups=m.groups, dilation=m.dilation
    )


def find_first_layer(model: nn.Module, x: Tensor) -> nn.Module:
    """The first module with parameters that the model applies to its input, found by tracing
    ``model(x)`` with forward hooks (one pass, in eval mode, without gradients).

    Parameterless identity modules before it are skipped. Anything else that transforms the
    input first (a normalisation written as a module, an ``F.interpolate`` in ``forward``)
    makes f0 ambiguous: a ``ValueError`` asks for ``first_layer=`` then.
    """
    from .modes import inner_mode

    calls: list[tuple[nn.Module, tuple, object]] = []
    leaves = [m for m in model.modules() if not list(m.children())]

    def hook(mod: nn.Module, args: tuple, out: object) -> None:
        calls.append((mod, args, out))

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad(), inner_mode(model, "eval"):
            model(x)
    finally:
        for h in handles:
            h.remove()
    current: set[int] = {id(x)}
    for mod, args, out in calls:
        if not args or id(args[0]) not in current:
            continue
        if any(True for _ in mod.parameters()):
            return mod
        if out is args[0]:  # nn.Identity and the like
            current.add(id(out))
            continue
        raise ValueError(
            f"the first module applied to the input is {type(mod).__name__}, which has no parameters; "
            "YOPO needs f0 to take the model's input directly: pass first_layer= a module that does "
            "(e.g. an nn.Sequential of the normalisation and the first convolution)"
        )
    raise ValueError(
        "could not identify the first layer: no module with parameters receives the model's input "
        "(the forward transforms it before any module); pass first_layer="
    )


def first_input_check(model: nn.Module, layer: nn.Module, x: Tensor) -> str | None:
    """``None`` if ``layer`` receives the model's input ``x`` itself in ``model(x)``, else why not."""
    from .modes import inner_mode

    seen: list[bool] = []

    def hook(mod: nn.Module, args: tuple) -> None:
        seen.append(bool(args) and args[0] is x)

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad(), inner_mode(model, "eval"):
            model(x)
    finally:
        handle.remove()
    if not seen:
        return "is never called by the model's forward (a slice such as model[:2] is a new module)"
    return None if seen[0] else "receives something other than the model's input"
