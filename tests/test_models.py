import pytest
import torch

from robustreg.models import SmallCNN, WideResNet, preact_resnet18, wide_resnet34_10


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_small_cnn_is_the_trades_yopo_network():
    m = SmallCNN()
    # conv 1→32, 32→32, 32→64, 64→64 (3×3) and fc 1024→200→200→10, as in the official code.
    expected = (9 * 32 + 32) + (9 * 32 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 64 + 64)
    expected += (1024 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10)
    assert n_params(m) == expected == 312_202
    assert m(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # The first layer (conv1 + ReLU) is exposed for YOPO.
    assert isinstance(m.layer_one[0], torch.nn.Conv2d) and isinstance(m.layer_one[1], torch.nn.ReLU)
    # The last layer starts at zero: every logit is 0 at initialisation.
    assert torch.equal(m.eval()(torch.rand(2, 1, 28, 28)), torch.zeros(2, 10))


def test_small_cnn_logit_scale_multiplies_the_logits_and_is_saved_with_the_model(tmp_path):
    from robustreg.checkpoint import load_model, save_model

    torch.manual_seed(0)
    plain = SmallCNN()
    torch.nn.init.normal_(plain.classifier[-1].weight)  # logits not all zero
    scaled = SmallCNN(logit_scale=10.0)
    scaled.load_state_dict(plain.state_dict())  # the scale is no parameter: the same state dict
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(scaled.eval()(x), 10.0 * plain.eval()(x), rtol=0, atol=0)
    save_model(scaled, tmp_path / "m", arch="smallcnn", kwargs={"logit_scale": 10.0})
    loaded, meta = load_model(tmp_path / "m")
    assert loaded.logit_scale == 10.0 and meta["kwargs"] == {"logit_scale": 10.0}
    torch.testing.assert_close(loaded(x), scaled(x), rtol=0, atol=0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="logit_scale"):
            SmallCNN(logit_scale=bad)


def test_preact_resnet18():
    m = preact_resnet18(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)).eval()
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # Kuang Liu's PreAct-ResNet-18 (11,171,146) plus the final BN (2·512) of Wong et al.'s.
    assert n_params(m) == 11_171_146 + 1024


def test_wide_resnet():
    assert n_params(wide_resnet34_10()) == 46_160_474  # the figure quoted for WRN-34-10
    m = WideResNet(depth=10, widen=2).eval()
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n"):
        WideResNet(depth=12)


def test_normalize_requires_both():
    with pytest.raises(ValueError, match="both mean and std"):
        preact_resnet18(mean=(0.5, 0.5, 0.5))
