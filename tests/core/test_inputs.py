"""Example inputs: a tensor, a tuple or a dict."""

import pytest
import torch

from geta.core.inputs import ExampleInputs
from geta.errors import ModelError


def test_forms_and_batch_size() -> None:
    x = torch.randn(4, 3)
    assert ExampleInputs.from_user(x).args == (x,)
    assert ExampleInputs.from_user((x, x)).args == (x, x)
    assert ExampleInputs.from_user({"a": x}).kwargs == {"a": x}
    assert ExampleInputs.from_user({"ids": torch.zeros(6, 2, dtype=torch.long)}).batch_size() == 6
    assert ExampleInputs.from_user((torch.tensor(1.0),)).batch_size() == 1


def test_rejects_other_types() -> None:
    with pytest.raises(ModelError, match="tensor, a tuple"):
        ExampleInputs.from_user(3)
