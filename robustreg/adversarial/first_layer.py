"""The first layer f0 of a network f = g ∘ f0, and fast products with its input Jacobian.

YOPO (Zhang et al., NeurIPS 2019) updates the adversary with the first layer only: its inner
steps need ``∇_z ⟨p, f0(z)⟩ = J_{f0}(z)ᵀ p`` for a frozen co-state p, many times per batch.
For the layers networks start with this product has a closed form much cheaper than autograd:

- ``Linear``:           ``Jᵀp = p W``;
- ``Conv2d``:           its forward as batched matrix products ``W cols(z)_b + b``, ``Jᵀp`` as
  ``Wᵀ p_b`` added back over the kernel offsets, and the weight gradient as ``Σ_b p_b cols(z)_bᵀ``;
- ``Conv1d``/``Conv3d`` and grouped convolutions: the transposed convolution;
- a pointwise ``ReLU``/``LeakyReLU``:  ``p ← p ⊙ σ'(pre-activation)`` (ATen's fused kernels);
- a per-channel normalisation ``(x − μ)/σ`` (:class:`robustreg.models.Normalize`): ``p ← p / σ``.

:class:`FirstLayer` recognises a module made of exactly these types (alone or in a plain
``nn.Sequential``; subclasses may override ``forward`` and are not trusted) with zero, numeric
padding, and uses the closed forms; anything else falls back to ``torch.func.vjp``. The closed forms are
hand-written kernels measured on CPUs (``benchmarks/step_cost.py``); on other devices
(:data:`robustreg.devices.KERNEL_DEVICES` lists where they run) the same products go through ``torch.func.vjp``
and autograd, the generic path, until a measurement there says otherwise. When f0 is affine (no
activation), ``Jᵀp`` does not depend on z and :attr:`FirstLayer.affine` says so, so that a
caller computes it once.

:func:`find_first_layer` identifies f0 in a model by tracing one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp

from ..devices import uses_kernels
from ..func import detached_parameters
from ..models import Normalize
from ..modes import inner_mode

_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)


_KNOWN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, Normalize, nn.ReLU, nn.LeakyReLU, nn.Identity)


def _leaves(module: nn.Module) -> list[nn.Module]:
    if type(module) is nn.Sequential:
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def _known(m: nn.Module) -> bool:
    """Exactly a type whose forward we know (a subclass may override forward)."""
    if type(m) not in _KNOWN:
        return False
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return not isinstance(m.padding, str) and m.padding_mode == "zeros"
    return True


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
        fast = all(_known(m) for m in leaves)
        ops = [m for m in leaves if type(m) is not nn.Identity]
        fast = fast and bool(ops)
        self.ops = ops if fast else None
        self.affine = fast and not any(isinstance(m, _ACTIVATIONS) for m in ops)
        self.params = dict(module.named_parameters())

    @property
    def fast(self) -> bool:
        """Whether ``Jᵀp`` has closed forms here (used for inputs on :data:`robustreg.devices.KERNEL_DEVICES`; other
        inputs, and modules without them, go through ``torch.func.vjp``)."""
        return self.ops is not None

    def _kernels_for(self, z: Tensor) -> bool:
        """The device seam: the closed forms for an input on a device they were measured on."""
        return self.ops is not None and uses_kernels(z)

    def __call__(self, z: Tensor) -> Tensor:
        return self.module(z)

    def input_vjp(self, z: Tensor, p: Tensor) -> Tensor:
        """``J_{f0}(z)ᵀ p``: the gradient of ``⟨p, f0(z)⟩`` with respect to z, detached."""
        p = p.to(z.dtype)  # under autocast the co-state can arrive in half precision
        with torch.no_grad():
            if not self._kernels_for(z):
                with detached_parameters(self.module):
                    _, pullback = vjp(self.module, z)
                    return pullback(p)[0]
            return self._reverse(z, p, param_grads=None)

    def param_grad(self, z: Tensor, p: Tensor) -> dict[str, Tensor]:
        """``∇_θ0 ⟨p, f0(z)⟩`` for every trainable parameter θ0 of f0 (YOPO's Hamiltonian gradient)."""
        names = {id(v): k for k, v in self.params.items() if v.requires_grad}
        if not names:
            return {}
        p = p.to(z.dtype)
        if self._kernels_for(z):
            grads: dict[int, Tensor] = {}
            with torch.no_grad():
                self._reverse(z, p, param_grads=grads)
            return {names[i]: g for i, g in grads.items() if i in names}
        with torch.enable_grad():
            out = self.module(z.detach())
            wanted = [self.params[k] for k in names.values()]
            grads_ = torch.autograd.grad((out * p).sum(), wanted, allow_unused=True)
        return {k: g for k, g in zip(names.values(), grads_, strict=True) if g is not None}

    def pullback(self, p: Tensor) -> Callable[[Tensor], Tensor]:
        """``z ↦ J_{f0}(z)ᵀ p`` for one co-state ``p`` taken at many points z (YOPO's inner steps).

        The closed forms write into buffers kept between calls instead of allocating large
        tensors at every step: each result is overwritten by the next call (copy it to keep it)."""
        if self.ops is None:
            return lambda z: self.input_vjp(z, p)
        workspace: dict[tuple[int, str], Tensor] = {}

        def apply(z: Tensor) -> Tensor:
            if not self._kernels_for(z):
                return self.input_vjp(z, p)
            with torch.no_grad():
                return self._reverse(z, p.to(z.dtype), None, workspace)

        return apply

    def _reverse(
        self,
        z: Tensor,
        p: Tensor,
        param_grads: dict[int, Tensor] | None,
        workspace: dict[tuple[int, str], Tensor] | None = None,
    ) -> Tensor:
        """One forward through the known pieces (keeping what the reverse pass needs), then
        the reverse pass with the closed forms. Fills ``param_grads`` (by parameter id) when
        given; returns ``Jᵀp`` (not computed through the first piece when only parameter
        gradients are asked). With a ``workspace``, large intermediates go into its buffers."""
        ws = _Buffers(workspace)
        saved = []  # per piece: its input, or for a 2-D convolution its columns
        h = z
        for i, m in enumerate(self.ops):
            if _as_matmul(m):
                cols = _Cols(m, h, ws.at(i))
                saved.append(cols)
                if i < len(self.ops) - 1:  # the last piece's output is never needed
                    h = cols.conv(m)
            else:
                saved.append(h)
                if i < len(self.ops) - 1:
                    h = m(h)
        for i in range(len(self.ops) - 1, -1, -1):
            m, s_in = self.ops[i], saved[i]
            if param_grads is not None:
                for prm, g in _param_grads(m, s_in, p):
                    param_grads[id(prm)] = g
                if i == 0:
                    return p
            # A convolution's output in the workspace is needed by nothing after its activation's
            # backward: that backward overwrites it (less memory to stream through the caches).
            reuse = workspace is not None and i > 0 and _as_matmul(self.ops[i - 1])
            p = _vjp_one(m, s_in, p, ws.at(i), in_place=reuse)
        return p


class _Buffers:
    """Named tensors reused between calls when their shape, dtype and device still match
    (``get`` allocates afresh without a workspace). ``at(i)`` scopes the names to piece i."""

    def __init__(self, store: dict[tuple[int, str], Tensor] | None, piece: int = -1) -> None:
        self.store, self.piece = store, piece

    def at(self, piece: int) -> _Buffers:
        return _Buffers(self.store, piece)

    def get(self, name: str, shape: tuple[int, ...] | None, like: Tensor) -> tuple[Tensor, bool]:
        """An uninitialised buffer of ``shape`` (contiguous), or with ``shape=None`` one like
        ``like`` (its shape and strides); and whether it is new (its contents are garbage)."""
        key = (self.piece, name)
        buf = None if self.store is None else self.store.get(key)
        size = like.shape if shape is None else torch.Size(shape)
        if (
            buf is not None
            and buf.shape == size
            and (shape is not None or buf.stride() == like.stride())
            and buf.dtype == like.dtype
            and buf.device == like.device
        ):
            return buf, False
        buf = torch.empty_like(like) if shape is None else like.new_empty(shape)
        if self.store is not None:
            self.store[key] = buf
        return buf, True


def _as_matmul(m: nn.Module) -> bool:
    """2-D convolutions without groups run as batched matrix products (:class:`_Cols`)."""
    return isinstance(m, nn.Conv2d) and m.groups == 1


class _Cols:
    """The receptive fields of a 2-D convolution's input ``h`` (B, C, H, W) as one matrix per
    sample, ``(B, C·kh·kw, Ho·Wo)``, plus a row of ones when the convolution has a bias, so
    that the convolution is the batched product ``[W₂ b] · cols_b`` (``W₂`` the weight as a
    ``(Cout, C·kh·kw)`` matrix). Gathered by one strided view of the padded input (im2col's
    per-sample loop costs more than the copy here). Intermediates go into ``ws``'s buffers.

    The batched kernels run on an expanded (not copied) weight: for the thin first layers
    YOPO differentiates, on CPU they beat both one large matrix product over the batch and the
    convolution kernels, and ``torch.matmul`` of a 2-D by a 3-D tensor copies."""

    def __init__(self, m: nn.Conv2d, h: Tensor, ws: _Buffers) -> None:
        (ph, pw), (dh, dw), (sh, sw) = m.padding, m.dilation, m.stride
        kh, kw = m.kernel_size
        self.in_shape, self.ws = h.shape, ws
        hp = F.pad(h, (pw, pw, ph, ph)) if ph or pw else h
        batch, chans, hgt, wid = hp.shape
        self.out_hw = ((hgt - dh * (kh - 1) - 1) // sh + 1, (wid - dw * (kw - 1) - 1) // sw + 1)
        self.padded = hp.shape
        s_b, s_c, s_h, s_w = hp.stride()
        shape = (batch, chans, kh, kw, *self.out_hw)
        view = hp.as_strided(shape, (s_b, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w), hp.storage_offset())
        self.k = chans * kh * kw
        rows = self.k + (m.bias is not None)
        cols, new = ws.get("cols", (batch, rows, self.out_hw[0] * self.out_hw[1]), h)
        if new and m.bias is not None:
            cols[:, self.k].fill_(1)
        cols[:, : self.k].view(shape).copy_(view)
        self.cols = cols

    def conv(self, m: nn.Conv2d) -> Tensor:
        """The convolution's output (B, Cout, Ho, Wo)."""
        cols = self.cols
        w = m.weight.detach().to(cols.dtype).reshape(m.out_channels, -1)
        if m.bias is not None:
            w = torch.cat([w, m.bias.detach().to(cols.dtype).unsqueeze(1)], 1)
        batch = cols.shape[0]
        out, _ = self.ws.get("out", (batch, m.out_channels, cols.shape[2]), cols)
        torch.bmm(w.expand(batch, -1, -1), cols, out=out)
        return out.view(batch, m.out_channels, *self.out_hw)

    def input_vjp(self, m: nn.Conv2d, p: Tensor) -> Tensor:
        """``Jᵀp`` (the transposed convolution): ``W₂ᵀ p_b`` as a batched product, then each
        kernel offset's rows added into the padded input's gradient through a strided view."""
        batch, chans = self.in_shape[:2]
        w = m.weight.detach().to(p.dtype).reshape(m.out_channels, -1)
        g, _ = self.ws.get("g", (batch, self.k, self.cols.shape[2]), p)
        torch.bmm(w.t().expand(batch, -1, -1), p.reshape(batch, m.out_channels, -1), out=g)
        g = g.view(batch, chans, *m.kernel_size, *self.out_hw)
        (ph, pw), (dh, dw), (sh, sw) = m.padding, m.dilation, m.stride
        out, _ = self.ws.get("grad", tuple(self.padded), p)
        out.zero_()
        s_b, s_c, s_h, s_w = out.stride()
        shape, strides = (batch, chans, *self.out_hw), (s_b, s_c, sh * s_h, sw * s_w)
        for i in range(m.kernel_size[0]):
            for j in range(m.kernel_size[1]):
                out.as_strided(shape, strides, i * dh * s_h + j * dw * s_w).add_(g[:, :, i, j])
        if ph or pw:
            out = out[:, :, ph : ph + self.in_shape[2], pw : pw + self.in_shape[3]]
        return out

    def weight_grad(self, m: nn.Conv2d, p: Tensor) -> Tensor:
        """``Σ_b p_b cols_bᵀ``, the weight gradient of ``⟨p, conv(h)⟩``."""
        p = p.reshape(p.shape[0], m.out_channels, -1)
        return torch.bmm(p, self.cols[:, : self.k].transpose(1, 2)).sum(0).reshape(m.weight.shape)


def _vjp_one(m: nn.Module, saved, p: Tensor, ws: _Buffers, in_place: bool = False) -> Tensor:
    """The input-VJP of one known piece ``m`` (``saved``: its input, or for a 2-D convolution
    its :class:`_Cols`); an activation's writes over its saved input when ``in_place``."""
    if isinstance(m, (nn.ReLU, nn.LeakyReLU)):  # autograd's fused kernels
        out = saved if in_place else ws.get("act", None, saved)[0]
        if isinstance(m, nn.ReLU):
            return torch.ops.aten.threshold_backward.grad_input(p, saved, 0, grad_input=out)
        return torch.ops.aten.leaky_relu_backward.grad_input(p, saved, m.negative_slope, False, grad_input=out)
    if isinstance(m, Normalize):
        return p / m.std.to(p.dtype)
    if _as_matmul(m):
        return saved.input_vjp(m, p)
    w = m.weight.detach().to(p.dtype)  # detached: ATen takes slower paths for operands needing grad
    if isinstance(m, nn.Linear):
        return p @ w
    h = saved
    dims = h.dim() - 2
    out_pad = []
    for i in range(dims):
        k = m.dilation[i] * (m.kernel_size[i] - 1) + 1
        out_pad.append(h.shape[2 + i] - ((p.shape[2 + i] - 1) * m.stride[i] - 2 * m.padding[i] + k))
    return _CONV_T[dims](
        p, w, stride=m.stride, padding=m.padding, output_padding=tuple(out_pad), groups=m.groups, dilation=m.dilation
    )


def _param_grads(m: nn.Module, saved, p: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
    """``∇_θ ⟨p, m(h)⟩`` for an affine piece's weight and bias (none for the others)."""
    if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return []
    out = []
    if m.weight.requires_grad:
        if isinstance(m, nn.Linear):
            gw = p.reshape(-1, p.shape[-1]).t() @ saved.reshape(-1, saved.shape[-1])
        elif _as_matmul(m):
            gw = saved.weight_grad(m, p)
        else:
            grad_fn = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}
            h = saved
            gw = grad_fn[h.dim() - 2](h, m.weight.shape, p, m.stride, m.padding, m.dilation, m.groups)
        out.append((m.weight, gw.to(m.weight.dtype)))
    if m.bias is not None and m.bias.requires_grad:
        dims = [0, *range(2, p.dim())] if not isinstance(m, nn.Linear) else list(range(p.dim() - 1))
        out.append((m.bias, p.sum(dims).to(m.bias.dtype)))
    return out


def _trace(model: nn.Module, x: Tensor, modules: list[nn.Module], hook) -> None:
    """Run ``model(x)`` once in eval mode without gradients, with ``hook`` as a forward hook on
    ``modules``; modes and running statistics are left as they were."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad(), inner_mode(model, "eval"):
            model(x)
    finally:
        for h in handles:
            h.remove()


def find_first_layer(model: nn.Module, x: Tensor) -> nn.Module:
    """The first module with parameters that the model applies to its input, found by tracing
    ``model(x)`` with forward hooks (one pass, in eval mode, without gradients).

    Parameterless identity modules before it are skipped. Anything else that transforms the
    input first (a normalisation written as a module, an ``F.interpolate`` in ``forward``)
    makes f0 ambiguous: a ``ValueError`` asks for ``first_layer=`` then.
    """
    calls: list[tuple[nn.Module, tuple, object]] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    _trace(model, x, leaves, lambda mod, args, out: calls.append((mod, args, out)))
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


def inspect_first_layer(model: nn.Module, layer: nn.Module, x: Tensor) -> tuple[str | None, bool]:
    """One traced ``model(x)``: why ``layer`` cannot be f0 (``None`` if it receives the model's
    input ``x`` itself), and whether the forward later modifies its output in place (its
    version counter moves, as after ``ReLU(inplace=True)``)."""
    seen: list[tuple[bool, Tensor, int]] = []
    _trace(model, x, [layer], lambda mod, args, out: seen.append((bool(args) and args[0] is x, out, out._version)))
    if not seen:
        return "is never called by the model's forward (a slice such as model[:2] is a new module)", False
    why = None if seen[0][0] else "receives something other than the model's input"
    return why, any(out._version != version for _, out, version in seen)
