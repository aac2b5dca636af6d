"""robustreg.interpret: saliency maps against written-out gradients, the transforms against their
definitions, accuracy on correctly classified images against a hand count, and the map measures
against independent formulas."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from robustreg import ProgressEvent
from robustreg.interpret import (
    PatchShuffle,
    Saturate,
    accuracy_on_correct,
    edge_mass,
    gini,
    input_gradient,
    patch_shuffle,
    saliency_image,
    saturate,
    smooth_grad,
    sobel_magnitude,
)
from robustreg.models import SmallCNN

from .conftest import assert_same, snapshot


def cnn(seed=0, classes=4):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Tanh(), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(6 * 8 * 8, classes),
    )  # fmt: skip
    with torch.no_grad():  # running statistics that differ from a batch's own
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.double()


# -- saliency -----------------------------------------------------------------------------------


def test_grad_of_a_linear_softmax_model_is_w_c_minus_the_probability_weighted_rows():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    w, p = lin.weight.detach(), F.softmax(lin(x), 1).detach()
    expected = w[y] - p @ w  # ∂/∂x [w_c·x + b_c − log Σ_j exp(w_j·x + b_j)]
    torch.testing.assert_close(input_gradient(lin, x, y), expected)


def test_grad_equals_per_sample_autograd_of_log_p_c_in_eval_mode():
    net = cnn()
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    net.eval()
    rows = []
    for i in range(5):  # one sample at a time: no batch effects can hide
        xi = x[i : i + 1].clone().requires_grad_()
        (g,) = torch.autograd.grad(F.log_softmax(net(xi), 1)[0, y[i]], xi)
        rows.append(g)
    net.train()
    torch.testing.assert_close(input_gradient(net, x, y), torch.cat(rows))


def test_target_none_is_the_models_prediction():
    net = cnn()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        pred = net.eval()(x).argmax(1)
    net.train()
    torch.testing.assert_close(input_gradient(net, x), input_gradient(net, x, pred))
    torch.testing.assert_close(
        smooth_grad(net, x, samples=3, generator=torch.Generator().manual_seed(1)),
        smooth_grad(net, x, pred, samples=3, generator=torch.Generator().manual_seed(1)),
    )


def test_smoothgrad_with_zero_noise_is_grad():
    net = cnn()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([3, 2, 1, 0])
    torch.testing.assert_close(smooth_grad(net, x, y, samples=5, noise=0.0), input_gradient(net, x, y))


@pytest.mark.parametrize("batch_size", [1, 3, 8, 1000])
def test_smoothgrad_is_the_average_of_an_explicit_loop_over_noisy_copies(batch_size):
    net = cnn(seed=2)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64) * torch.tensor([1.0, 0.5, 2.0, 0.1]).view(4, 1, 1, 1).double()
    y = torch.tensor([0, 1, 2, 3])
    n, level = 6, 0.2
    sigma = level * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))  # each image's own range
    gen = torch.Generator().manual_seed(7)
    net.eval()
    total = torch.zeros_like(x)
    for _ in range(n):
        noisy = x + sigma.view(4, 1, 1, 1) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        for i in range(4):
            xi = noisy[i : i + 1].clone().requires_grad_()
            (g,) = torch.autograd.grad(F.log_softmax(net(xi), 1)[0, y[i]], xi)
            total[i] += g[0]
    net.train()
    got = smooth_grad(
        net, x, y, samples=n, noise=level, batch_size=batch_size, generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(got, total / n)


def test_saliency_changes_nothing_in_the_model_and_works_under_no_grad():
    net = cnn()
    net.train()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    net[-1].bias.requires_grad_(False)
    snap = snapshot(net)
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        a = input_gradient(net, x)
        b = smooth_grad(net, x, samples=4, batch_size=5)
    assert a.shape == b.shape == x.shape and a.abs().sum() > 0 and b.abs().sum() > 0
    assert not x.requires_grad and x.grad is None
    assert_same(net, snap)


def test_saliency_of_vectors_and_float32():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(9, 5)
    e = smooth_grad(mlp, x, samples=10, batch_size=16)
    assert e.shape == x.shape and e.dtype == torch.float32 and torch.isfinite(e).all()


def test_saliency_rejects_bad_arguments_before_any_pass():
    net = cnn()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    cases = [
        (lambda: smooth_grad(net, x, samples=0), ValueError, "samples"),
        (lambda: smooth_grad(net, x, noise=-0.1), ValueError, "noise"),
        (lambda: smooth_grad(net, x, noise=math.nan), ValueError, "noise"),
        (lambda: smooth_grad(net, x, batch_size=0), ValueError, "batch_size"),
        (lambda: smooth_grad(net, x, generator=3), TypeError, "generator"),
        (lambda: input_gradient(net, x.long()), TypeError, "x"),
        (lambda: input_gradient(net, x.float()), TypeError, "x"),
        (lambda: input_gradient(net, x, torch.tensor([0])), ValueError, "target"),
        (lambda: input_gradient(net, x, torch.tensor([0.0, 1.0])), TypeError, "target"),
        (lambda: input_gradient("net", x), TypeError, "model"),
    ]
    for call, err, word in cases:
        with pytest.raises(err, match=word):
            call()
    assert not calls
    with pytest.raises(ValueError, match="target holds class 9"):
        input_gradient(net, x, torch.tensor([0, 9]))


def test_saliency_image_sums_channels_and_caps_at_the_quantile():
    e = torch.zeros(2, 3, 10, 10)
    e[0, :, 0, 0] = torch.tensor([1.0, -1.0, 2.0])  # mass 4 on one pixel: sparser than the quantile
    e[1] = torch.arange(300.0).view(3, 10, 10) - 150  # a spread map
    img = saliency_image(e, clip=0.5)
    assert img.shape == (2, 10, 10) and img.min() >= 0 and img.max() <= 1
    assert img[0, 0, 0] == 1 and img[0].sum() == 1  # by its maximum
    mass = e[1].abs().sum(0)
    assert torch.allclose(img[1], (mass / mass.flatten().quantile(0.5)).clamp(max=1))
    assert saliency_image(torch.zeros(1, 4, 4)).sum() == 0


# -- transforms ---------------------------------------------------------------------------------


def written_out_saturation(x: np.ndarray, p: float) -> np.ndarray:
    u = 2 * x - 1
    return (np.sign(u) * np.abs(u) ** (2 / p) + 1) / 2


@pytest.mark.parametrize("p", [0.25, 0.5, 1.0, 3.0, 8.0, 64.0, 1024.0])
def test_saturation_is_the_papers_formula_inside_the_box_and_monotone(p):
    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    img = x.view(1, 1, 7, 143)
    out = saturate(img, p).flatten()
    np.testing.assert_allclose(out.numpy(), written_out_saturation(x.numpy(), p), atol=1e-12)
    assert out.min() >= 0 and out.max() <= 1
    assert (out.diff() >= 0).all()  # monotone


def test_saturation_level_two_is_the_identity_and_the_extremes_binarise_and_fade():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 5)
    assert torch.equal(saturate(x, 2), x) and saturate(x, 2) is not x
    torch.testing.assert_close(saturate(x, 2 + 1e-9), x)  # continuous at the identity
    binary = saturate(x, math.inf)
    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(binary, (x > 0.5).float())
    away = (x - 0.5).abs() > 0.05
    torch.testing.assert_close(saturate(x, 1e5)[away], binary[away], atol=1e-3, rtol=0)  # levels → ∞ binarise
    inside = (x - 0.5).abs() < 0.45  # |2x − 1| < 0.9: (0.9)^2000 ≈ 1e-92
    torch.testing.assert_close(saturate(x, 1e-3)[inside], torch.full_like(x[inside], 0.5), atol=1e-6, rtol=0)  # fade
    assert saturate(torch.full((1, 2, 2), 0.5), math.inf).eq(0.5).all()


def test_saturation_on_other_bounds_is_the_unit_box_one_rescaled():
    torch.manual_seed(1)
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    lo, hi = -2.0, 3.0
    torch.testing.assert_close(saturate(lo + (hi - lo) * x, 7.0, bounds=(lo, hi)), lo + (hi - lo) * saturate(x, 7.0))


def test_saturation_and_shuffle_reject_bad_arguments():
    x = torch.rand(1, 1, 4, 4)
    for level, err in [(0, ValueError), (-1, ValueError), (math.nan, ValueError), ("8", TypeError), (True, TypeError)]:
        with pytest.raises(err, match="level"):
            saturate(x, level)
        with pytest.raises(err, match="level"):
            Saturate(level)
    with pytest.raises(ValueError, match="bounds"):
        saturate(x + 1, 4)
    with pytest.raises(ValueError, match="bounds"):
        saturate(x, 4, bounds=None)
    with pytest.raises(ValueError, match="x must be"):
        saturate(torch.rand(4, 4), 4)
    with pytest.raises(TypeError, match="x must be"):
        patch_shuffle(x.numpy(), 2)
    with pytest.raises(ValueError, match="k must be <= min"):
        patch_shuffle(x, 5)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        PatchShuffle(0)
    with pytest.raises(TypeError, match="generator"):
        patch_shuffle(x, 2, generator=0)


def patches(img: torch.Tensor, k: int, top: int = 0, left: int = 0) -> list[bytes]:
    """The k×k patches of one image (C, H, W) of the block at (top, left), in raster order."""
    sh, sw = img.shape[1] // k, img.shape[2] // k
    return [
        img[:, top + i * sh : top + (i + 1) * sh, left + j * sw : left + (j + 1) * sw].numpy().tobytes()
        for i, j in itertools.product(range(k), range(k))
    ]


@pytest.mark.parametrize(("size", "k"), [(8, 2), (8, 4), (8, 8), (28, 4), (28, 8), (28, 3), (9, 2)])
def test_patch_shuffle_permutes_the_patches_and_keeps_the_border(size, k):
    gen = torch.Generator().manual_seed(size * 10 + k)
    x = torch.rand(5, 3, size, size, generator=gen)
    out = patch_shuffle(x, k, generator=torch.Generator().manual_seed(0))
    side = size // k
    off = (size - k * side) // 2
    moved = 0
    for img, new in zip(x, out, strict=True):
        before, after = patches(img, k, off, off), patches(new, k, off, off)
        assert sorted(before) == sorted(after)  # the multiset of patches is preserved
        moved += before != after
        inner = torch.zeros(size, size, dtype=torch.bool)
        inner[off : off + k * side, off : off + k * side] = True
        assert torch.equal(new[:, ~inner], img[:, ~inner])  # the leftover border stays put
    assert moved >= 4  # five images, 4+ patches each: a fixed order would be a bug


def test_patch_shuffle_k1_is_the_identity_and_single_images_and_seeds_work():
    x = torch.rand(2, 1, 6, 6)
    assert torch.equal(patch_shuffle(x, 1), x)
    a = patch_shuffle(x[0], 3, generator=torch.Generator().manual_seed(4))
    b = PatchShuffle(3, generator=torch.Generator().manual_seed(4))(x[0])
    assert a.shape == (1, 6, 6) and torch.equal(a, b)
    assert sorted(patches(a, 3)) == sorted(patches(x[0], 3))
    assert repr(PatchShuffle(4)) == "PatchShuffle(k=4)" and repr(Saturate(8)) == "Saturate(level=8, bounds=(0.0, 1.0))"
    torch.manual_seed(3)
    c = patch_shuffle(x, 3)
    torch.manual_seed(3)
    assert torch.equal(c, patch_shuffle(x, 3))  # torch's global generator when none is given


def test_transforms_compose_with_torchvision():
    from torchvision import transforms

    img = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    out = transforms.Compose([transforms.ToTensor(), Saturate(math.inf), PatchShuffle(2)])(img)
    assert out.shape == (3, 12, 12) and set(out.unique().tolist()) <= {0.0, 1.0}


# -- accuracy on correctly classified images ----------------------------------------------------


class Threshold(nn.Module):
    """Class 1 when the mean pixel is above 0.5, else class 0."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(100.0))

    def forward(self, x):
        m = x.flatten(1).mean(1) - 0.5
        return torch.stack([-m, m], 1) * self.scale


def test_accuracy_on_correct_against_a_hand_count():
    means = torch.tensor([0.2, 0.3, 0.7, 0.9, 0.6, 0.1])
    y = torch.tensor([0, 0, 1, 1, 0, 1])  # clean predictions 0 0 1 1 1 0: correct = samples 0, 1, 2, 3
    x = means.view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    shift = {  # after "up" the means are 0.45 0.55 0.95 1.0 0.85 0.35: predictions 0 1 1 1 1 0
        "identity": lambda b: b,
        "up": lambda b: (b + 0.25).clamp(max=1.0),
        "invert": lambda b: 1 - b,  # predictions 1 1 0 0 0 1: no correct sample stays correct
    }
    events = []
    res = accuracy_on_correct(Threshold(), (x, y), shift, batch_size=4, progress=events.append)
    assert (res.n, res.correct, res.clean) == (6, 4, 4 / 6)
    # "up": of the correct 0, 1, 2, 3, sample 1 flips to class 1 (wrong): 3 of 4
    assert res.per_transform == {"identity": 1.0, "up": 0.75, "invert": 0.0}
    assert isinstance(events[0], ProgressEvent) and events[0].attack is None
    last = events[-1]  # robust_accuracy's events: counts over all samples, the transforms as attacks
    assert (last.done, last.total, last.clean, last.samples) == (6, 6, 4, 6)
    assert last.correct == {"identity": 4, "up": 3, "invert": 2} and last.attacked == dict.fromkeys(shift, 6)
    assert last.robust == 0 and last.finished == 6


def test_accuracy_on_correct_reads_a_dataloader_and_restores_modes():
    net = SmallCNN()
    net.train()
    snap = snapshot(net)
    data = torch.utils.data.TensorDataset(torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    res = accuracy_on_correct(net, loader, {"sat": Saturate(8), "shuffle": PatchShuffle(4)})
    assert res.n == 10 and set(res.per_transform) == {"sat", "shuffle"}
    assert_same(net, snap)
    if res.correct == 0:
        assert all(math.isnan(v) for v in res.per_transform.values())


def test_accuracy_on_correct_rejects_bad_transforms():
    x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0])
    with pytest.raises(TypeError, match="transforms"):
        accuracy_on_correct(Threshold(), (x, y), {})
    with pytest.raises(TypeError, match="transforms"):
        accuracy_on_correct(Threshold(), (x, y), {"a": 3})
    with pytest.raises(ValueError, match="transform 'crop'"):
        accuracy_on_correct(Threshold(), (x, y), {"crop": lambda b: b[..., :1]})
    with pytest.raises(ValueError, match="no samples"):
        accuracy_on_correct(Threshold(), [], {"id": lambda b: b})


# -- measures of a map --------------------------------------------------------------------------


def test_gini_against_the_mean_absolute_difference_form():
    torch.manual_seed(0)
    e = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    a = e.abs().sum(1).flatten(1)
    n = a.shape[1]
    # G = Σ_i Σ_j |a_i − a_j| / (2 n Σ_i a_i), the textbook form, equal to the sorted-rank one
    expected = (a[:, :, None] - a[:, None, :]).abs().sum((1, 2)) / (2 * n * a.sum(1))
    torch.testing.assert_close(gini(e), expected)
    torch.testing.assert_close(gini(7.5 * e), gini(e))  # scale-free


def test_gini_extremes_and_an_empty_map():
    one = torch.zeros(1, 4, 4)
    one[0, 1, 2] = 3.0
    assert gini(torch.ones(1, 4, 4)).item() == pytest.approx(0.0, abs=1e-7)
    assert gini(one).item() == pytest.approx(15 / 16)
    assert math.isnan(gini(torch.zeros(1, 4, 4)).item())


def test_sobel_magnitude_matches_scipy():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    gray = x.mean(1).numpy()
    for i in range(2):
        gh = ndimage.sobel(gray[i], axis=1, mode="nearest")
        gv = ndimage.sobel(gray[i], axis=0, mode="nearest")
        np.testing.assert_allclose(sobel_magnitude(x)[i].numpy(), np.hypot(gh, gv), atol=1e-12)


def test_edge_mass_counts_the_mass_on_the_strongest_edges():
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    x[..., 2:6, 2:6] = 1.0  # a square: edges around its outline
    mag = sobel_magnitude(x).flatten()
    k = math.ceil(0.25 * 64)
    on = torch.zeros(64, dtype=torch.bool)
    on[mag.topk(k).indices] = True
    assert mag[on].min() > 0  # the outline has more than k pixels of non-zero gradient
    sal = on.view(1, 8, 8).double()
    assert edge_mass(sal, x, top=0.25).item() == pytest.approx(1.0)
    assert edge_mass((~on).view(1, 8, 8).double(), x, top=0.25).item() == pytest.approx(0.0)
    assert edge_mass(torch.ones(1, 3, 8, 8, dtype=torch.float64), x, top=0.25).item() == pytest.approx(k / 64)
    assert math.isnan(edge_mass(torch.zeros(1, 8, 8), x.float()).item())
    with pytest.raises(ValueError, match="top"):
        edge_mass(sal, x, top=0)
    with pytest.raises(ValueError, match="same images"):
        edge_mass(sal, torch.zeros(1, 1, 4, 4))
