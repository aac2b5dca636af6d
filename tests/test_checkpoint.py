"""Saved models (safetensors + JSON) and the state that recipe checkpoints carry for loss objects."""

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import robustreg
from robustreg.charts import VAE, LocalizedGAN, MLPAutoEncoder
from robustreg.checkpoint import ARCHITECTURES, load_chart, load_model, read_meta, save_model
from robustreg.models import MLP, ConvLarge, SmallCNN


@pytest.mark.parametrize(
    ("arch", "kwargs", "shape"),
    [
        ("smallcnn", {"drop": 0.0}, (3, 1, 28, 28)),
        ("mlp", {"in_features": 5, "num_classes": 3, "hidden": [7, 6]}, (4, 5)),
        ("conv_large", {"drop": 0.0}, (2, 3, 32, 32)),
    ],
)
def test_model_round_trip_gives_the_same_outputs(tmp_path, arch, kwargs, shape):
    torch.manual_seed(0)
    model = ARCHITECTURES[arch](**kwargs)
    if arch == "conv_large":  # BN running statistics are part of the saved state
        model.train()
        model(torch.rand(8, 3, 32, 32))
    model.eval()
    x = torch.rand(shape)
    save_model(model, tmp_path / "m", arch=arch, kwargs=kwargs, config={"seed": 3}, metrics={"acc": 0.5})
    loaded, meta = load_model(tmp_path / "m")
    assert not loaded.training
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert meta["arch"] == arch and meta["config"] == {"seed": 3} and meta["metrics"] == {"acc": 0.5}
    # the weights file is safetensors: a JSON header, no pickle
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert set(header) - {"__metadata__"} == set(model.state_dict())


def test_charts_save_their_kind_and_config(tmp_path):
    for chart in (
        VAE((1, 28, 28), latent=3, width=4),
        MLPAutoEncoder((2,), 1, circular=True),
        LocalizedGAN(latent=2, width=4),
    ):
        save_model(chart, tmp_path / chart.kind)
        loaded, meta = load_model(tmp_path / chart.kind)
        assert type(loaded) is type(chart) and meta["kwargs"] == chart.config
        for a, b in zip(loaded.state_dict().values(), chart.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_load_chart_reads_the_saved_model_directory_and_the_deprecated_file(tmp_path):
    torch.manual_seed(0)
    chart = LocalizedGAN(latent=2, width=4)
    save_model(chart, tmp_path / "dir")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the directory format: no deprecation
        loaded = load_chart(tmp_path / "dir")
    assert type(loaded) is LocalizedGAN and not loaded.training and loaded.config == chart.config
    with pytest.warns(DeprecationWarning, match="save_model"):
        chart.save(tmp_path / "old.pt")
    with pytest.warns(DeprecationWarning, match="deprecated"):
        legacy = load_chart(tmp_path / "old.pt")
    for a, b, c in zip(loaded.state_dict().values(), legacy.state_dict().values(), chart.state_dict().values(),
                       strict=True):  # fmt: skip
        assert torch.equal(a, c) and torch.equal(b, c)
    save_model(SmallCNN(), tmp_path / "classifier", arch="smallcnn")
    with pytest.raises(ValueError, match="smallcnn classifier, not a chart"):
        load_chart(tmp_path / "classifier")
    with pytest.raises(FileNotFoundError, match="saved chart is a directory"):
        load_chart(tmp_path / "missing")


def test_save_and_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="arch must be one of"):
        save_model(SmallCNN(), tmp_path / "a", arch="resnet50")
    with pytest.raises(TypeError):  # a non-JSON config fails before anything is written
        save_model(SmallCNN(), tmp_path / "b", arch="smallcnn", config={"x": object()})
    assert not (tmp_path / "b").exists()
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        read_meta(tmp_path / "missing")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model.json").write_text(json.dumps({"format": "other", "arch": "smallcnn"}))
    with pytest.raises(ValueError, match="not a robustreg model"):
        load_model(tmp_path / "c")


def test_mlp_and_conv_large_shapes_and_first_layer():
    mlp = MLP(50, 2, hidden=(64, 64))
    assert mlp(torch.rand(3, 50)).shape == (3, 2)
    assert isinstance(mlp.layer_one[0], torch.nn.Linear) and mlp.layer_one[0].out_features == 64
    net = ConvLarge(num_classes=10)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in net.parameters()) == 3_123_850
    with pytest.raises(ValueError, match="hidden width"):
        MLP(5, 2, hidden=(0,))


def _atta_run(reg, model, opt, x, y, steps):
    for t in range(steps):
        idx = torch.arange(t % 2 * 4, t % 2 * 4 + 4)
        loss = reg(x[idx], y[idx], idx)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_atta_state_dict_resumes_exactly_and_remember_stores_rows():
    torch.manual_seed(0)
    x, y = torch.rand(8, 6), torch.randint(0, 2, (8,))

    def fresh():
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(6, 2))
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    model, opt = fresh()
    reg = robustreg.ATTA(model, 8, eps=0.1, alpha=0.05, steps=1, bounds=None)
    torch.manual_seed(2)
    _atta_run(reg, model, opt, x, y, 2)
    state = copy.deepcopy(reg.state_dict())
    model_state, opt_state, rng = (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(opt.state_dict()),
        torch.get_rng_state(),
    )
    _atta_run(reg, model, opt, x, y, 2)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, opt2 = fresh()
    model2.load_state_dict(model_state)
    opt2.load_state_dict(opt_state)
    reg2 = robustreg.ATTA(model2, 8, eps=0.1, alpha=0.05, steps=1, bounds=None)
    reg2.load_state_dict(state)
    torch.set_rng_state(rng)
    _atta_run(reg2, model2, opt2, x, y, 2)
    for a, b in zip(expected, model2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    reg3 = robustreg.ATTA(model2, 8, eps=0.1, bounds=None)
    reg3.remember(torch.tensor([5, 1]), torch.full((2, 6), 0.03))
    assert reg3.state_dict()["seen"].nonzero().flatten().tolist() == [1, 5]
    assert torch.equal(reg3.memory[5], torch.full((6,), 0.03))
    with pytest.raises(ValueError, match="dataset_size"):
        reg3.load_state_dict({**reg3.state_dict(), "memory": torch.zeros(3, 6)})


def test_free_at_state_dict_carries_the_perturbation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    x, y = torch.rand(3, 4), torch.tensor([0, 1, 0])
    reg = robustreg.FreeAT(model, eps=0.2, bounds=None)
    reg(x, y).backward()
    delta = reg.state_dict()["delta"].clone()
    assert delta.abs().max() > 0
    other = robustreg.FreeAT(model, eps=0.2, bounds=None)
    other.load_state_dict({"delta": delta})
    # the next call starts from the carried δ: the same adversarial input
    model.zero_grad()
    torch.testing.assert_close(F.cross_entropy(model(x + delta), y), other(x, y), rtol=0, atol=0)


# -- training state without pickle: save_tree / load_tree, manifests --------------------------------


def test_a_tree_of_optimizer_scheduler_and_rng_states_round_trips(tmp_path):
    import random
    from collections import Counter

    import numpy as np

    from robustreg.checkpoint import load_tree, save_tree

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 5], 0.1)  # milestones: a Counter with int keys
    tree = {
        "opt": opt.state_dict(), "sched": sched.state_dict(), "numpy": np.random.get_state(),
        "python": random.getstate(), "torch": torch.get_rng_state(), "nan": float("nan"), "ninf": float("-inf"),
        "view": torch.arange(6.0)[::2], "tagged": {"__tensor__": "not a tag", 3: "int key"}, "none": None,
    }  # fmt: skip
    save_tree(tree, tmp_path, "state")
    back = load_tree(tmp_path, "state")
    assert isinstance(back["sched"]["milestones"], Counter) and back["sched"]["milestones"] == Counter({3: 1, 5: 1})
    assert back["opt"]["param_groups"] == opt.state_dict()["param_groups"]  # tuples (betas) stay tuples
    for k, v in opt.state_dict()["state"][0].items():
        torch.testing.assert_close(back["opt"]["state"][0][k], v, rtol=0, atol=0)
    assert back["python"] == random.getstate()
    want = np.random.get_state()
    assert (
        back["numpy"][0] == want[0] and (back["numpy"][1] == want[1]).all() and back["numpy"][1].dtype == want[1].dtype
    )
    assert back["numpy"][2:] == want[2:]
    assert torch.equal(back["torch"], torch.get_rng_state()) and torch.equal(back["view"], torch.tensor([0.0, 2, 4]))
    assert back["tagged"] == {"__tensor__": "not a tag", 3: "int key"} and back["none"] is None
    assert np.isnan(back["nan"]) and back["ninf"] == float("-inf")
    opt2 = torch.optim.Adam(model.parameters(), lr=1.0)
    opt2.load_state_dict(back["opt"])  # the optimizer takes it back
    assert opt2.param_groups[0]["lr"] == 1e-2


def test_save_tree_refuses_objects_it_cannot_store_without_pickle(tmp_path):
    from robustreg.checkpoint import save_tree

    with pytest.raises(TypeError, match=r"tree\['f'\]: cannot save a function"):
        save_tree({"f": lambda: 0}, tmp_path, "state")
    assert not list(tmp_path.iterdir())  # nothing written


def test_load_tree_never_unpickles(tmp_path):
    import pickle

    from robustreg.checkpoint import load_tree, save_tree

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "executed",))

    save_tree({"a": torch.ones(2)}, tmp_path, "state")
    (tmp_path / "state.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(Exception):  # noqa: B017 - whatever safetensors says about a non-safetensors file
        load_tree(tmp_path, "state")
    (tmp_path / "state.json").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError):
        load_tree(tmp_path, "state")
    assert not (tmp_path / "executed").exists()


def test_a_manifest_catches_a_missing_truncated_or_edited_file(tmp_path):
    from robustreg.checkpoint import verify_manifest, write_manifest

    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "a.bin").write_bytes(b"0123456789")
    (d / "b.json").write_text("{}")
    assert verify_manifest(d) == (None, "no manifest.json (the write did not finish)")
    write_manifest(d, step=7)
    manifest, reason = verify_manifest(d)
    assert reason == "" and manifest["step"] == 7 and set(manifest["files"]) == {"a.bin", "b.json"}
    (d / "a.bin").write_bytes(b"012345678")
    assert "a.bin has 9 bytes" in verify_manifest(d)[1]
    (d / "a.bin").write_bytes(b"0123456780")  # same size, other bytes
    assert "a.bin does not match its SHA-256" in verify_manifest(d)[1]
    (d / "a.bin").write_bytes(b"0123456789")
    (d / "b.json").unlink()
    assert verify_manifest(d)[1] == "b.json is missing"
    (d / "b.json").write_text("{}")
    (d / "evaluation.json").write_text("{}")  # written later by recipes/evaluate.py: not state, ignored
    assert verify_manifest(d)[1] == ""
    (d / "manifest.json").write_text('{"files": ')
    assert "manifest.json is unreadable" in verify_manifest(d)[1]


def test_a_model_with_a_nonfinite_weight_is_never_saved(tmp_path):
    model = MLP(in_features=3, num_classes=2, hidden=[4])
    save_model(model, tmp_path / "good", arch="mlp", kwargs={"in_features": 3, "num_classes": 2, "hidden": [4]})
    before = (tmp_path / "good" / "model.safetensors").read_bytes()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite values in"):
        save_model(model, tmp_path / "good", arch="mlp", kwargs={"in_features": 3, "num_classes": 2, "hidden": [4]})
    assert (tmp_path / "good" / "model.safetensors").read_bytes() == before  # the good one is kept
