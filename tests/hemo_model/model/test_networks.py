"""Model shapes, the method's head, the context wrapper and checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hemo_model.model.networks import ContextModel, HemoNet
from hemo_model.model.spec import CONTEXT_WEIGHTS, ModelSpec
from hemo_model.model.storage import load_checkpoint, save_checkpoint


def test_output_shape_and_method_head() -> None:
    model = HemoNet().eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    layers = [type(m) for m in model.head]
    assert layers == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert model.head[0].in_features == 1000 and model.head[0].out_features == 256
    assert HemoNet(head="linear").eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ValueError):
        HemoNet(head="mlp")


def test_local_pretrained_weights_are_loaded(tmp_path: Path) -> None:
    source = HemoNet()
    torch.save(source.backbone.state_dict(), tmp_path / "resnet34.pth")
    loaded = HemoNet(pretrained=tmp_path / "resnet34.pth")
    assert torch.equal(loaded.backbone.conv1.weight, source.backbone.conv1.weight)


def test_context_model_is_weighted_sum_of_slice_logits() -> None:
    torch.manual_seed(0)
    model = HemoNet().eval()
    windows = torch.randn(2, 5, 3, 32, 32)
    expected = sum(w * model(windows[:, i]) for i, w in enumerate(CONTEXT_WEIGHTS))
    assert torch.allclose(ContextModel(model)(windows), expected, atol=1e-5)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = HemoNet().eval()
    config = ModelSpec(image_size=64, thresholds=[0.3, 0.4, 0.5, 0.6, 0.7])
    save_checkpoint(tmp_path / "m.pt", model, config, epoch=3)
    loaded, loaded_config, payload = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded.eval()(x), model(x))
    assert loaded_config == config and payload["epoch"] == 3
    assert not (tmp_path / "m.pt.tmp").exists()


def test_frozen_batchnorm_keeps_stage1_statistics_while_the_rest_trains() -> None:
    torch.manual_seed(0)
    windows = torch.rand(3, 5, 3, 32, 32) * 4  # far from the statistics a fresh network holds
    for freeze, changes in ((True, False), (False, True)):
        model = ContextModel(HemoNet(head="method"), freeze_batchnorm=freeze).train()
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms and all(m.training != freeze for m in norms)
        assert model.slice_model.training and model.training
        before = [m.running_mean.clone() for m in norms]
        model(windows)
        moved = any(not torch.equal(b, m.running_mean) for b, m in zip(before, norms))
        assert moved == changes
    assert not any(m.training for m in model.eval().modules())
