import math

import pytest
import torch

from luna.augment import Augmentation, _affine, augment, center_crop, crop_starts, flip
from luna.data.ct import crop_start
from luna.module import LunaClassifier

WIDTH = (32, 48, 48)


def batch(context=(32, 48, 48), size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, *context, generator=generator) * 300


def test_zero_magnitudes_are_the_exact_identity():
    crops = batch()
    offsets = torch.tensor([[16, 24, 24]] * 4)
    assert torch.equal(augment(crops, offsets, WIDTH, Augmentation()), crops)


def test_flips_are_exact_and_rotation_by_zero_changes_nothing():
    crops = batch()
    assert torch.equal(flip(crops, (2,)), crops.flip(4))
    torch.manual_seed(0)
    flipped = augment(crops, torch.zeros(4, 3, dtype=torch.long), WIDTH, Augmentation(flip_irc=(False, False, True)))
    for k in range(4):
        assert torch.equal(flipped[k], crops[k]) or torch.equal(flipped[k], crops[k].flip(3))
    # rotation switched on but a scale/offset of zero and an angle of zero: the affine is the identity
    transform = _affine(Augmentation(), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(transform, torch.eye(3, 4).expand(2, 3, 4))


def test_presized_context_gives_the_reference_crop_exactly():
    context = (40, 64, 64)
    crops = batch(context)
    offsets = torch.tensor([[20, 32, 32], [0, 5, 63], [39, 60, 1], [10, 31, 40]])
    out = center_crop(crops, offsets, WIDTH)
    for k in range(4):
        start = crop_start(offsets[k].tolist(), WIDTH, context)
        assert tuple(crop_starts(offsets[k : k + 1], WIDTH, context)[0].tolist()) == start
        window = tuple(slice(s, s + w) for s, w in zip(start, WIDTH))
        assert torch.equal(out[k, 0], crops[k, 0][window])


def test_resampling_with_tiny_magnitudes_stays_close_and_ranges_hold():
    crops = batch((40, 64, 64))
    offsets = torch.tensor([[20, 32, 32]] * 4)
    torch.manual_seed(1)
    out = augment(crops, offsets, WIDTH, Augmentation(offset=1e-6, scale=1e-6))
    assert out.shape == (4, 1, *WIDTH)
    assert torch.allclose(out, center_crop(crops, offsets, WIDTH), atol=1e-2 * 300)
    torch.manual_seed(2)
    theta = _affine(Augmentation(offset=0.1, scale=0.2), torch.zeros(1000, 3, dtype=torch.bool))
    diagonal = torch.diagonal(theta[:, :, :3], dim1=1, dim2=2)
    assert diagonal.min() >= 0.8 and diagonal.max() <= 1.2
    assert theta[:, :, 3].abs().max() <= 0.1
    torch.manual_seed(3)
    rotated = _affine(Augmentation(rotate=True), torch.zeros(500, 3, dtype=torch.bool))
    angles = torch.atan2(rotated[:, 1, 0], rotated[:, 0, 0]) % (2 * math.pi)
    assert angles.min() < 0.3 and angles.max() > 2 * math.pi - 0.3  # uniform over the full circle
    assert torch.equal(rotated[:, 2, :3], torch.tensor([0.0, 0.0, 1.0]).expand(500, 3))


def test_noise_has_the_configured_magnitude():
    crops = torch.zeros(8, 1, *WIDTH)
    torch.manual_seed(4)
    out = augment(crops, torch.tensor([[16, 24, 24]] * 8), WIDTH, Augmentation(noise_hu=25.0))
    assert out.std().item() == pytest.approx(25.0, rel=0.02)


class FlipInvariant(torch.nn.Module):
    """Logits from the crop's mean: the same for every flip."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 2)

    def forward(self, x):
        return self.linear(x.mean(dim=(1, 2, 3, 4))[:, None])


def test_tta_of_a_flip_invariant_model_equals_its_plain_output():
    network = FlipInvariant()
    plain = LunaClassifier(network=network, channels_last=False)
    tta = LunaClassifier(network=network, channels_last=False, tta_flips=[[], [0], [1], [2], [1, 2]])
    crops = batch()
    assert torch.allclose(tta.nodule_probability(crops), plain.nodule_probability(crops), atol=1e-7)
    asymmetric = LunaClassifier(channels_last=False, tta_flips=[[], [2]]).eval()
    expected = (
        torch.softmax(asymmetric(crops), 1)[:, 1] + torch.softmax(asymmetric(crops.flip(4)), 1)[:, 1]
    ) / 2
    assert torch.allclose(asymmetric.nodule_probability(crops), expected)
