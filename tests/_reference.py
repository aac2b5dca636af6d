"""Slow, written-out references shared by the VAT and TNAR tests."""

import torch
from torch.func import functional_call, hessian


def kl(p_logits, q_logits):
    """Per-sample KL(softmax(p_logits) ‖ softmax(q_logits)), written out."""
    p = torch.softmax(p_logits, -1)
    return (p * (torch.log_softmax(p_logits, -1) - torch.log_softmax(q_logits, -1))).sum(-1)


def kl_hessians(model, x):
    """Each sample's explicit Hessian of KL(p(x_i) ‖ p(x_i + r)) in r at 0 (torch.func.hessian)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    out = []
    for xi in x:
        clean = functional_call(model, params, (xi[None],))[0].detach()

        def f(r, xi=xi, clean=clean):
            return kl(clean, functional_call(model, params, ((xi + r)[None],))[0])

        out.append(hessian(f)(torch.zeros_like(xi)))
    return out
