"""The core install: ``import robustreg`` and its loss objects, attacks, charts and checkpoints
work without the ``recipes`` extra (accelerate, rich, matplotlib) or the others; the modules that
need an extra say which one to install."""

import subprocess
import sys
import textwrap

import pytest

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    EXTRAS = {"accelerate", "rich", "matplotlib", "tensorboard", "pyautoattack"}

    class Absent(importlib.abc.MetaPathFinder):  # as if none of the extras were installed
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in EXTRAS:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    """
)


def run(body: str) -> subprocess.CompletedProcess:
    code = BLOCK + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_the_library_trains_without_any_extra(tmp_path):
    proc = run(
        f"""
        import torch
        import robustreg
        from robustreg.charts import LinearChart
        from robustreg.checkpoint import load_model, save_model
        from robustreg.control import MSA
        from robustreg.models import MLP, SmallCNN

        torch.manual_seed(0)
        cnn = SmallCNN()
        x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
        opt = torch.optim.SGD(cnn.parameters(), lr=0.01)
        for reg in (robustreg.PGDAT(cnn, eps=0.3, steps=2), robustreg.YOPO(cnn, m=2, n=2, eps=0.3),
                    robustreg.Amata(robustreg.PGDAT(cnn, eps=0.3), k_min=1, k_max=3, tau=0.2, total=2)):
            loss = reg(x, y)
            opt.zero_grad(); loss.backward(); opt.step()
        mlp = MLP(in_features=6, num_classes=3, hidden=[8])
        xu = torch.randn(5, 6)
        (robustreg.VAT(mlp, eps=0.5)(xu) + robustreg.TNAR(mlp, LinearChart(torch.randn(6, 2), torch.zeros(6)),
                                                         eps_tangent=0.5, eps_normal=0.1)(xu)).backward()
        MSA(MLP(in_features=6, num_classes=3, hidden=[8]), beta=5.0).step(xu, torch.randint(0, 3, (5,)))
        acc = robustreg.robust_accuracy(cnn, (x, y), attack=robustreg.PGD(eps=0.3, steps=3))
        save_model(cnn, r"{tmp_path / "model"}", arch="smallcnn")
        load_model(r"{tmp_path / "model"}")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in EXTRAS)
        assert not loaded, loaded
        print("ok", acc.robust)
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


@pytest.mark.parametrize(
    ("statement", "what"),
    [
        ("import robustreg.cli", "robustreg.cli"),
        ("from robustreg.plots import image_rows; import torch; image_rows([('x', torch.rand(1, 1, 4, 4))], 'p', 't')",
         "robustreg.plots"),
        ("from robustreg.control import plot_eigenvalues; import torch; plot_eigenvalues({'w': torch.eye(2)})",
         "plot_eigenvalues"),
    ],
)  # fmt: skip
def test_what_needs_the_recipes_extra_says_so(statement, what):
    proc = run(statement)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert what in last and "recipes extra" in last and "pip install 'robustreg[recipes]'" in last, last
