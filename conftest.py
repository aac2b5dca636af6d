"""The names the docstring examples of ``robustreg`` use (pytest collects them with
``--doctest-modules``): a SmallCNN, an MNIST-shaped batch, an optimiser, small loaders, and every
public name of ``robustreg``. Each example runs in its own temporary directory."""

import pytest
import torch
from _pytest.doctest import DoctestItem

import robustreg
from robustreg.models import SmallCNN


@pytest.fixture(autouse=True)
def _docstring_examples(request, doctest_namespace, tmp_path, monkeypatch):
    if not isinstance(request.node, DoctestItem):
        return
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    doctest_namespace.update({name: getattr(robustreg, name) for name in robustreg.__all__})
    doctest_namespace.update(
        robustreg=robustreg, torch=torch, model=model, x=x, y=y, optimizer=optimizer, opt=optimizer, epochs=2,
        loader=[(x, y)], indexed_loader=[(x, y, torch.arange(8))], train_set=list(zip(x, y, strict=True)),
    )  # fmt: skip
