"""MyModel, the course baseline and the model factory."""
from __future__ import annotations

import pytest
import torch

from src.helpers import quiet_torchscript
from src.model import CourseCNN, MyModel, ResidualBlock, count_parameters, create_model


@pytest.mark.parametrize("num_classes", [1, 3, 13, 50])
def test_mymodel_gives_logits_for_each_class_count(num_classes):
    model = MyModel(num_classes=num_classes).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (128, 128), (224, 224)])
def test_mymodel_takes_any_input_size(size):
    model = MyModel(num_classes=5).eval()
    assert model(torch.randn(1, 3, *size)).shape == (1, 5)


def test_mymodel_defaults_and_architecture():
    model = MyModel()
    assert model.classifier.out_features == 50
    assert model.dropout.p == pytest.approx(0.7)
    # residual blocks with batch norm, global average pooling, dropout right before the classifier
    assert any(isinstance(m, ResidualBlock) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert isinstance(model.pool[0], torch.nn.AdaptiveAvgPool2d)
    # it is much smaller than the course network, whose dense layer alone has 12.8M weights
    assert count_parameters(model) < count_parameters(CourseCNN(50)) / 3


def test_residual_blocks_start_as_identity():
    """Zero-initialised last batch norm: a fresh block passes non-negative input through unchanged."""
    block = ResidualBlock(8, 8).eval()
    MyModel(3)  # the init lives in MyModel.reset_parameters; check it on the model's own blocks too
    model = MyModel(3).eval()
    first = model.stages[0][0]
    x = torch.rand(2, first.conv1.in_channels, 8, 8)
    assert torch.allclose(first(x), x)
    assert not torch.allclose(block(x[:, :8]), x[:, :8])  # a plain block (no zero init) does transform its input


def test_dropout_is_active_only_in_training():
    model = MyModel(4, dropout=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.equal(a, model(x))


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"dropout": 1.0}, {"dropout": -0.1},
                                    {"widths": [16, 32], "depths": [1]}])
def test_mymodel_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MyModel(**{"num_classes": 3, **kwargs})


def test_create_model_builds_scratch_and_course_with_their_kwargs():
    model = create_model("scratch", 7, dropout=0.3, widths=[16, 32, 64, 128], depths=[1, 1, 1, 1])
    assert isinstance(model, MyModel)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    # model_kwargs are JSON-able and rebuild the same architecture
    clone = create_model("scratch", 7, **model.model_kwargs)
    assert clone.model_kwargs == {"dropout": 0.3, "widths": [16, 32, 64, 128], "depths": [1, 1, 1, 1]}
    clone.load_state_dict(model.state_dict())
    course = create_model("course", 4, img_size=64)
    assert isinstance(course, CourseCNN)
    assert course.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 4)


def test_course_cnn_is_the_course_recipe():
    model = CourseCNN(50)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 256]
    dense = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert dense[0].in_features == 256 * 7 * 7 and dense[0].out_features == 1024
    assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 50)


def test_mymodel_scripts_to_torchscript_and_gives_the_same_logits():
    """Export relies on torch.jit.script: the model must script as is."""
    model = MyModel(6).eval()
    x = torch.randn(2, 3, 64, 64)
    with quiet_torchscript():
        scripted = torch.jit.script(model)
    assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_channels_last_gives_the_same_logits():
    model = MyModel(5).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-4)
