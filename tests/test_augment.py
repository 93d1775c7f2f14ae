import math

import numpy as np
import pytest
import torch

from luna.data.crops import crop_starts
from luna.training.augment import Augmentation, mixup, window_crop
from luna.training.evaluation import EvaluationChoices
from luna.training.module import LunaClassifier
from tests.oracles import augment, book_affine, crop_start

WIDTH = (32, 48, 48)


def batch(context=(32, 48, 48), size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, *context, generator=generator) * 300


def test_zero_magnitudes_are_the_exact_identity():
    crops = batch()
    windows = torch.zeros(4, 3, dtype=torch.long)
    assert torch.equal(augment(crops, windows, WIDTH, Augmentation()), crops)


def test_random_flips_are_exact_flip_about_half_the_samples_and_only_the_asked_axes():
    crops = batch(size=64)
    torch.manual_seed(0)
    flipped = augment(
        crops, torch.zeros(64, 3, dtype=torch.long), WIDTH, Augmentation(flip_irc=(False, False, True))
    )
    same = [torch.equal(flipped[k], crops[k]) for k in range(64)]
    along_c = [torch.equal(flipped[k], crops[k].flip(3)) for k in range(64)]
    assert all(
        a or b for a, b in zip(same, along_c, strict=True)
    )  # exact: the sample itself or its mirror along C, nothing else
    assert 16 <= sum(along_c) <= 48  # p = 0.5: both happen


def test_presized_context_gives_the_reference_crop_exactly():
    context = (40, 64, 64)
    crops = batch(context)
    offsets = np.array([[20, 32, 32], [0, 5, 63], [39, 60, 1], [10, 31, 40]])
    windows = crop_starts(offsets, WIDTH, context)
    out = window_crop(crops, torch.from_numpy(windows), WIDTH)
    assert torch.equal(augment(crops, torch.from_numpy(windows), WIDTH, Augmentation()), out)
    for k in range(4):
        start = crop_start(offsets[k].tolist(), WIDTH, context)
        window = tuple(slice(s, s + w) for s, w in zip(start, WIDTH, strict=True))
        assert torch.equal(out[k, 0], crops[k, 0][window])


@pytest.mark.parametrize("width", [33, 32, 1])
def test_one_crop_rule_puts_the_centre_at_width_over_two_for_odd_and_even_widths(width):
    size = 100
    for center in (0, 1, 17, 50, 98, 99):
        (start,) = crop_starts(np.array([[center, 50, 50]]), (width, 1, 1), (size, 100, 100))[:, :1][0]
        assert 0 <= start <= size - width
        if width // 2 <= center <= size - 1 - (width - 1 - width // 2):
            assert center - start == width // 2  # away from the borders: the centre voxel is at width // 2
    assert (
        crop_start((17, 50, 50), (33, 1, 1), (100, 100, 100))[0] == 1
    )  # the book's round(17 - 16.5) gives 0
    even = np.random.default_rng(0).integers(0, 100, (200, 3))
    book = [
        [min(max(int(round(c - w / 2)), 0), 100 - w) for c, w in zip(row, (32, 48, 48), strict=True)]
        for row in even.tolist()
    ]
    assert crop_starts(even, (32, 48, 48), (100, 100, 100)).tolist() == book  # even widths: the book's rule


def test_resampling_with_tiny_magnitudes_stays_close_and_ranges_hold():
    crops = batch((40, 64, 64))
    windows = torch.tensor([[4, 8, 8]] * 4)
    torch.manual_seed(1)
    out = augment(crops, windows, WIDTH, Augmentation(offset=1e-6, scale=1e-6))
    assert out.shape == (4, 1, *WIDTH)
    assert torch.allclose(out, window_crop(crops, windows, WIDTH), atol=1e-2 * 300)
    torch.manual_seed(2)
    theta = book_affine(Augmentation(offset=0.1, scale=0.2), torch.zeros(1000, 3, dtype=torch.bool))
    diagonal = torch.diagonal(theta[:, :, :3], dim1=1, dim2=2)
    assert diagonal.min() >= 0.8 and diagonal.max() <= 1.2
    assert theta[:, :, 3].abs().max() <= 0.1
    torch.manual_seed(3)
    rotated = book_affine(Augmentation(rotate=True), torch.zeros(500, 3, dtype=torch.bool))
    angles = torch.atan2(rotated[:, 1, 0], rotated[:, 0, 0]) % (2 * math.pi)
    assert angles.min() < 0.3 and angles.max() > 2 * math.pi - 0.3  # uniform over the full circle
    assert torch.equal(rotated[:, 2, :3], torch.tensor([0.0, 0.0, 1.0]).expand(500, 3))


def test_noise_has_the_configured_magnitude():
    crops = torch.zeros(8, 1, *WIDTH)
    torch.manual_seed(4)
    out = augment(crops, torch.zeros(8, 3, dtype=torch.long), WIDTH, Augmentation(noise_hu=25.0))
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
    tta = LunaClassifier(network=network, channels_last=False)
    tta.configure_evaluation(EvaluationChoices(tta_flips=[[], [0], [1], [2], [1, 2]]))
    crops = batch()
    assert torch.allclose(tta.probabilities(crops), plain.probabilities(crops), atol=1e-7)
    asymmetric = LunaClassifier(channels_last=False).eval()
    asymmetric.configure_evaluation(EvaluationChoices(tta_flips=[[], [2]]))
    expected = (torch.softmax(asymmetric(crops), 1) + torch.softmax(asymmetric(crops.flip(4)), 1)) / 2
    assert torch.allclose(asymmetric.probabilities(crops), expected)


@pytest.mark.parametrize("flips", [[[5]], [[-1]], [[0, 0]], [[True]]])
def test_tta_flips_name_valid_axes(flips):
    with pytest.raises(ValueError, match="tta_flips"):
        EvaluationChoices(tta_flips=flips)


def test_mixup_blends_each_sample_with_a_partner_and_keeps_it_dominant():
    crops = batch()
    torch.manual_seed(5)
    mixed, partner, weight = mixup(crops, alpha=0.4)
    assert torch.all(weight >= 0.5) and torch.all(weight <= 1)
    expected = weight.view(-1, 1, 1, 1, 1) * crops + (1 - weight.view(-1, 1, 1, 1, 1)) * crops[partner]
    assert torch.allclose(mixed, expected)
    assert sorted(partner.tolist()) == list(range(4))
