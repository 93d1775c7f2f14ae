import math

import pytest
import torch

from luna.models.luna_model import LunaModel, load_book_checkpoint
from luna.training.module import LunaClassifier

BOOK_KEYS = {
    "tail_batchnorm.weight",
    "tail_batchnorm.bias",
    "tail_batchnorm.running_mean",
    "tail_batchnorm.running_var",
    "tail_batchnorm.num_batches_tracked",
    "head_linear.weight",
    "head_linear.bias",
}


def test_shape_parameter_count_and_book_keys():
    torch.manual_seed(0)
    model = LunaModel()
    assert sum(p.numel() for p in model.parameters()) == 222_220
    keys = set(model.state_dict())
    assert BOOK_KEYS <= keys
    assert {f"block{b}.conv{c}.{w}" for b in range(1, 5) for c in (1, 2) for w in ("weight", "bias")} <= keys
    logits, probabilities = model(torch.randn(3, 1, 32, 48, 48))
    assert logits.shape == probabilities.shape == (3, 2)
    assert torch.allclose(probabilities.sum(1), torch.ones(3))
    assert model.head_linear.in_features == 1152


def test_head_follows_the_crop_width():
    model = LunaModel(width_irc=(32, 64, 64))
    assert model.head_linear.in_features == 64 * 2 * 4 * 4
    assert model(torch.randn(1, 1, 32, 64, 64))[0].shape == (1, 2)
    with pytest.raises(ValueError, match="multiple of 16"):
        LunaModel(width_irc=(30, 48, 48))


def test_kaiming_fan_out_initialisation_and_a_head_that_starts_at_chance():
    torch.manual_seed(1)
    model = LunaModel()
    logits, probabilities = model(torch.randn(3, 1, 32, 48, 48) * 300)
    assert torch.equal(logits, torch.zeros(3, 2)) and torch.allclose(probabilities, torch.full((3, 2), 0.5))
    book = LunaModel(head_init="kaiming")
    assert book.head_linear.weight.std().item() == pytest.approx(
        math.sqrt(2 / 2), rel=0.1
    )  # fan_out = 2 classes
    for conv in (model.block3.conv2, model.block4.conv1, model.block4.conv2):
        fan_out = conv.out_channels * 27
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
        assert conv.weight.mean().abs().item() < 0.1 * math.sqrt(2 / fan_out)
        assert conv.bias.abs().max().item() <= 1 / math.sqrt(fan_out)


def book_checkpoint(path, model, prefix=""):
    torch.save(
        {
            "sys_argv": ["training.py", "--epochs", "1"],
            "epoch": 3,
            "totalTrainingSamples_count": 1000,
            "model_state": {prefix + k: v for k, v in model.state_dict().items()},
            "model_name": "LunaModel",
            "optimizer_state": {"state": {}, "param_groups": []},
            "optimizer_name": "SGD",
        },
        path,
    )


@pytest.mark.parametrize("prefix", ["", "module."])
def test_book_checkpoint_gives_the_same_outputs(tmp_path, prefix):
    torch.manual_seed(2)
    original = LunaModel().eval()
    with torch.no_grad():  # make the batchnorm statistics non-trivial
        original.tail_batchnorm.running_mean.fill_(-300.0)
        original.tail_batchnorm.running_var.fill_(9e4)
    book_checkpoint(tmp_path / "book.state", original, prefix)
    loaded = load_book_checkpoint(tmp_path / "book.state").eval()
    crops = torch.randn(4, 1, 32, 48, 48) * 400
    assert torch.equal(loaded(crops)[0], original(crops)[0])
    module = LunaClassifier(init_checkpoint=str(tmp_path / "book.state"), channels_last=False).eval()
    assert torch.equal(module(crops), original(crops)[0])


def test_not_a_book_checkpoint_is_refused(tmp_path):
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a book checkpoint"):
        load_book_checkpoint(tmp_path / "other.pt")
