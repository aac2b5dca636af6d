"""Reference networks used by the papers this library implements.

- :class:`SmallCNN`: the MNIST network of TRADES and YOPO (4 conv + 3 fc, 312,202 weights);
  its first layer ``layer_one = conv1 + ReLU`` is exposed, as YOPO's official code does.
- :func:`preact_resnet18`: PreAct-ResNet-18 for CIFAR-10 (He et al. 2016, identity mappings),
  the network of Fast-AT, Free-AT and YOPO's CIFAR experiments.
- :class:`MLP`: a fully connected ReLU network for vector inputs (two rings), with
  ``layer_one = Linear + ReLU`` for YOPO.
- :class:`ConvLarge`: the 13-layer "Conv-Large" CNN of the VAT and TNAR papers' CIFAR-10 /
  SVHN semi-supervised experiments (Laine & Aila 2017; Miyato et al. 2018).
- :class:`BALCNN`: the two-convolution MNIST network of Bayesian Adversarial Learning (Ye and
  Zhu 2018).
- :func:`wide_resnet34_10`: WideResNet-34-10 for CIFAR-10 (Zagoruyko & Komodakis 2016), the
  network of Madry et al., TRADES and YOPO's WRN experiments. The TRADES file also builds a
  ``sub_block1`` that its forward never calls; it is left out here (an unused block breaks
  DDP and inflates the weight count), which changes no output.

Each takes inputs in ``[0, 1]``; ``mean``/``std`` (per channel) add a normalisation layer in
front, so the threat model stays in pixel space.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel, for ``(B, C, ...)`` inputs."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must have the same length and std > 0, got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _input_layer(mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Module:
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    return nn.Identity() if mean is None else Normalize(mean, std)  # type: ignore[arg-type]


class SmallCNN(nn.Module):
    """MNIST SmallCNN of TRADES (Zhang et al. 2019) and YOPO (Zhang et al. 2019).

    ``(B, 1, 28, 28) → layer_one (conv 3×3, 32; ReLU) → conv 32 → pool → conv 64 → conv 64 →
    pool → fc 200 → dropout → fc 200 → fc num_classes``; ``in_channels=3, image_size=32`` for
    CIFAR/SVHN-shaped images. Convolutions use Kaiming-normal
    initialisation and the last layer starts at zero, as in the official code.

    ``logit_scale`` multiplies the logits (a fixed temperature, not a parameter): a network trained
    on ``CE(s · logits)`` — MSA's contracted layers need it — keeps ``s`` in the model, so that its
    softmax, and every attack on the cross-entropy, sees the logits it was trained on.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        drop: float = 0.5,
        image_size: int = 28,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.logit_scale = _checks.positive_float("logit_scale", logit_scale)
        side = ((image_size - 4) // 2 - 4) // 2  # after the four valid 3×3 convolutions and two poolings
        if side < 1:
            raise ValueError(f"image_size must be >= 14, got {image_size}")
        self.layer_one = nn.Sequential(nn.Conv2d(in_channels, 32, 3), nn.ReLU())
        self.features = nn.Sequential(
            nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 200), nn.ReLU(), nn.Dropout(drop),
            nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, num_classes),
        )  # fmt: skip
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.classifier[-1].weight)
        nn.init.zeros_(self.classifier[-1].bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, 28, 28) -> (B, num_classes)
        logits = self.classifier(self.features(self.layer_one(x)))
        return logits if self.logit_scale == 1.0 else self.logit_scale * logits


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv with an identity (or 1×1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + skip


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 32×32 inputs with a final BN-ReLU before pooling."""

    def __init__(
        self,
        blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = _input_layer(mean, std)
        self.layer_one = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers, cin = [], 64
        for i, n in enumerate(blocks):
            cout = 64 * 2**i
            for j in range(n):
                layers.append(PreActBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, 32, 32) -> (B, num_classes)
        out = self.layers(self.layer_one(self.normalize(x)))
        out = F.relu(self.bn(out))  # (B, 512, 4, 4)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def preact_resnet18(num_classes: int = 10, **kwargs) -> PreActResNet:
    """PreAct-ResNet-18 (11.17 M weights for 10 classes)."""
    return PreActResNet((2, 2, 2, 2), num_classes, **kwargs)


class WideBlock(nn.Module):
    """WRN basic block: BN-ReLU-conv3×3-BN-ReLU-conv3×3, with a 1×1 conv shortcut on change."""

    def __init__(self, cin: int, cout: int, stride: int, drop: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        # As in the reference code: with a projection the shortcut takes the pre-activated input.
        skip = x if self.shortcut is None else self.shortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        out = F.dropout(out, p=self.drop, training=self.training)
        return self.conv2(out) + skip


class WideResNet(nn.Module):
    """WideResNet-depth-widen for 32×32 inputs (Zagoruyko & Komodakis, BMVC 2016)."""

    def __init__(
        self,
        depth: int = 34,
        widen: int = 10,
        num_classes: int = 10,
        *,
        drop: float = 0.0,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.normalize = _input_layer(mean, std)
        self.layer_one = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2), strict=True):
            for j in range(n):
                blocks.append(WideBlock(cin, cout, stride if j == 0 else 1, drop))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, 32, 32) -> (B, num_classes)
        out = self.blocks(self.layer_one(self.normalize(x)))
        out = F.relu(self.bn(out))  # (B, 64·widen, 8, 8)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def wide_resnet34_10(num_classes: int = 10, **kwargs) -> WideResNet:
    """WideResNet-34-10 (46.2 M weights for 10 classes)."""
    return WideResNet(34, 10, num_classes, **kwargs)


class MLP(nn.Module):
    """``flatten → layer_one (Linear, ReLU) → [Linear, ReLU] × (len(hidden) − 1) → Linear``: the
    two-rings classifier of the semi-supervised and robust recipes (``hidden=(100, 100)``)."""

    def __init__(self, in_features: int, num_classes: int = 2, hidden: Sequence[int] = (100, 100)) -> None:
        super().__init__()
        sizes = [int(in_features), *(int(h) for h in hidden)]
        if len(sizes) < 2 or min(sizes) < 1 or num_classes < 1:
            raise ValueError(
                f"in_features, every hidden width and num_classes must be >= 1, got {sizes}, {num_classes}"
            )
        self.layer_one = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.ReLU())
        rest: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes[1:]):
            rest += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*rest, nn.Linear(sizes[-1], num_classes))

    def forward(self, x: Tensor) -> Tensor:  # (B, in_features) -> (B, num_classes)
        return self.body(self.layer_one(x.flatten(1)))


class ConvLarge(nn.Module):
    """Conv-Large of the VAT (Miyato et al., TPAMI 2018, Table 7) and TNAR (Yu et al., CVPR 2019)
    semi-supervised CIFAR-10 / SVHN experiments::

        [conv 3×3, 128; BN; LReLU(0.1)] × 3 → max-pool 2 → dropout 0.5
        [conv 3×3, 256; BN; LReLU(0.1)] × 3 → max-pool 2 → dropout 0.5
        conv 3×3 (valid), 512; BN; LReLU → conv 1×1, 256; BN; LReLU → conv 1×1, 128; BN; LReLU
        → global average pool → fc num_classes

    (3.1 M weights). ``layer_one`` is its first convolution (for YOPO); ``drop=0`` removes the
    dropout (deterministic forward passes inside VAT/TNAR)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        drop: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()

        def block(cin: int, cout: int, k: int, pad: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k, 1, pad), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]

        self.normalize = _input_layer(mean, std)
        self.layer_one = nn.Conv2d(in_channels, 128, 3, 1, 1)
        self.features = nn.Sequential(
            nn.BatchNorm2d(128), nn.LeakyReLU(0.1), *block(128, 128, 3, 1), *block(128, 128, 3, 1),
            nn.MaxPool2d(2), nn.Dropout(drop),
            *block(128, 256, 3, 1), *block(256, 256, 3, 1), *block(256, 256, 3, 1),
            nn.MaxPool2d(2), nn.Dropout(drop),
            *block(256, 512, 3, 0), *block(512, 256, 1, 0), *block(256, 128, 1, 0),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, 32, 32) -> (B, num_classes)
        return self.fc(self.features(self.layer_one(self.normalize(x))))


class BALCNN(nn.Module):
    """The MNIST network of Bayesian Adversarial Learning (Ye and Zhu, NeurIPS 2018, Sec. 5)::

        conv 3×3, 32; ReLU → max-pool 2 → conv 3×3, 32; ReLU → max-pool 2 → dropout
        → fc ``hidden``; ReLU → fc num_classes

    (the paper gives the layers, not the widths of its dropout and first fc: ``drop=0.5`` and
    ``hidden=128`` here). ``layer_one`` is the first convolution (for YOPO)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: int = 128, drop: float = 0.5
    ) -> None:
        super().__init__()
        side = ((image_size - 2) // 2 - 2) // 2  # two valid 3×3 convolutions, two poolings
        if side < 1:
            raise ValueError(f"image_size must be >= 10, got {image_size}")
        self.layer_one = nn.Conv2d(in_channels, 32, 3)
        self.features = nn.Sequential(
            nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(drop), nn.Flatten()
        )
        self.classifier = nn.Sequential(nn.Linear(32 * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.classifier(self.features(self.layer_one(x)))
