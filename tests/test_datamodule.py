from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from luna.data.samplers import EvaluationSampler, TrainingSampler
from luna.data.splits import epoch_order, stride_split
from luna.luna16.datamodule import LunaDataModule
from luna.luna16.phantom import PhantomSpec
from tests.oracles import candidate_of


def make(phantom_dir, cache_root, **kwargs):
    dm = LunaDataModule(phantom_dir, cache_dir=cache_root, num_workers=0, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def series_of(dm, positions):
    return {dm.cache.image_ids[s] for s in dm.cache.image_of[positions]}


def test_series_split_strides_over_sorted_series_without_sharing_a_ct(phantom_dir, cache_root):
    dm = make(phantom_dir, cache_root, val_stride=4)
    uids = sorted(series_of(dm, np.arange(len(dm.cache))))  # the series with candidates on disk
    assert series_of(dm, dm.val_positions) == set(uids[::4])
    assert series_of(dm, dm.train_positions) == set(uids) - set(uids[::4])
    assert len(dm.train_positions) + len(dm.val_positions) == len(dm.cache)
    assert np.all(np.diff(dm.val_positions) > 0)  # reference order kept inside each split


def test_candidate_split_takes_every_nth_candidate(phantom_dir, cache_root):
    dm = make(phantom_dir, cache_root, split_by="row", val_stride=10)
    n = len(dm.cache)
    assert list(dm.val_positions) == list(range(0, n, 10))
    assert len(dm.train_positions) == n - len(range(0, n, 10))
    assert not set(dm.val_positions) & set(dm.train_positions)
    assert series_of(dm, dm.val_positions) & series_of(dm, dm.train_positions)  # chapter 11: CTs shared


def test_subset_split_is_a_luna16_fold(phantom_dir, cache_root):
    dm = make(phantom_dir, cache_root, split_by="fold", val_fold=2)
    subsets = dm.cache.folds[dm.cache.image_of]
    assert set(subsets[dm.val_positions]) == {2}
    assert 2 not in set(subsets[dm.train_positions])
    with pytest.raises(ValueError, match=r"val_fold=9: .* the folds are \[0, 1, 2, 3\]"):
        make(phantom_dir, cache_root, split_by="fold", val_fold=9)


def test_split_that_leaves_validation_empty_is_an_error(phantom_dir, cache_root):
    with pytest.raises(ValueError, match="val_stride"):
        make(phantom_dir, cache_root, val_stride=1)


def test_batches_are_int16_crops_with_traceable_candidates(phantom_dir, cache_root):
    dm = make(phantom_dir, cache_root, batch_size=8)
    batch = next(iter(dm.val_dataloader()))
    assert batch["crop"].shape == (8, 1, 32, 48, 48) and batch["crop"].dtype == torch.int16
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (8,)
    assert batch["crop"].min() >= -1000 and batch["crop"].max() <= 1000
    for row in range(8):
        candidate = candidate_of(dm, int(batch["index"][row]))
        assert candidate.series_uid == dm.image_ids[int(batch["image"][row])]
        assert tuple(batch["center_xyz"][row].tolist()) == candidate.center_xyz
        assert int(batch["label"][row]) == candidate.is_nodule
        assert torch.equal(batch["crop"][row, 0], torch.from_numpy(dm.cache.crop(int(batch["index"][row]))))
    assert torch.equal(batch["window_irc"], torch.zeros(8, 3, dtype=torch.long))


def test_int16_batches_become_the_same_float32_crops_on_the_device(phantom_dir, cache_root):
    from luna.training.module import LunaClassifier

    dm = make(phantom_dir, cache_root, batch_size=8)
    batch = next(iter(dm.val_dataloader()))
    module = LunaClassifier(channels_last=False)
    on_device = module.on_after_batch_transfer(batch, 0)
    assert on_device["crop"].dtype == torch.float32
    expected = np.stack([dm.cache.crop(int(k)).astype(np.float32) for k in batch["index"]])[:, None]
    assert torch.equal(
        on_device["crop"], torch.from_numpy(expected)
    )  # bit-identical to converting on the CPU


def test_balanced_epochs_have_the_requested_ratio_and_reshuffle(phantom_dir, cache_root):
    dm = make(phantom_dir, cache_root, negatives_per_positive=2, samples_per_epoch=300, seed=3)
    sampler = dm.train_dataloader().sampler
    labels = dm.train_dataset.labels
    first = list(sampler)
    assert len(first) == 300 and labels[first].sum() == 100
    assert all(labels[first[k]] == (k % 3 == 0) for k in range(300))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and labels[second].sum() == 100
    again = make(phantom_dir, cache_root, negatives_per_positive=2, samples_per_epoch=300, seed=3)
    assert list(again.train_dataloader().sampler) == first  # same seed, same order


def test_natural_ratio_epoch_is_a_permutation(phantom_dir, cache_root):
    dm = make(phantom_dir, cache_root)
    order = list(dm.train_dataloader().sampler)
    assert sorted(order) == list(range(len(dm.train_dataset)))


def test_ranks_draw_disjoint_shares_of_one_epoch(phantom_dir, cache_root):
    dm = make(phantom_dir, cache_root, negatives_per_positive=1, samples_per_epoch=101)
    ranks = [TrainingSampler(dm.train_dataset, 1, 101, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    shares = [list(s) for s in ranks]
    assert len(shares[0]) == len(shares[1]) == 50
    interleaved = [x for pair in zip(*shares, strict=True) for x in pair]
    assert interleaved == ranks[0].global_order().tolist()


def test_evaluation_sampler_covers_every_sample_once_without_padding(phantom_dir, cache_root):
    dm = make(phantom_dir, cache_root)
    n = len(dm.val_dataset)
    for world in (1, 2, 3, 7):
        shares = [list(EvaluationSampler(dm.val_dataset, world, rank)) for rank in range(world)]
        assert sum(shares, []) == list(range(n))


def test_eval_images_selects_test_and_predict_data(phantom_dir, cache_root):
    dm = make(phantom_dir, cache_root)
    uid = dm.cache.image_ids[int(dm.cache.image_of[0])]
    dm_eval = make(phantom_dir, cache_root, eval_images=[uid])
    assert set(dm_eval.test_dataloader().dataset.positions) == set(
        np.flatnonzero(dm.cache.image_of == dm.cache.image_of[0])
    )
    assert list(dm.test_dataloader().dataset.positions) == list(dm.val_positions)
    with pytest.raises(ValueError, match="9.9.9"):
        make(phantom_dir, cache_root, eval_images=["9.9.9"]).predict_dataloader()


def test_phantom_is_generated_on_first_use_only_when_no_data_dir_is_given(tmp_path):
    spec = PhantomSpec(series=4, seed=1, subsets=2)
    dm = make(None, tmp_path / "cache", phantom=spec, val_stride=2)
    assert dm.data_dir.parent == tmp_path / "cache" and dm.data_dir.name.startswith("phantom-")
    assert (dm.data_dir / "subset1").is_dir() and len(np.unique(dm.cache.image_of)) == 4
    with pytest.raises(
        FileNotFoundError, match=f"data_dir={tmp_path / 'typo'}: the LUNA16 folder does not exist"
    ):
        LunaDataModule(tmp_path / "typo", phantom=spec, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing written for the typo
    with pytest.raises(ValueError, match="data_dir is required"):
        LunaDataModule(None, cache_dir=tmp_path)


def test_the_cache_defaults_to_a_folder_beside_the_data_and_the_phantom_to_data_cache(
    phantom_dir, points_dir, tmp_path, monkeypatch, capsys
):
    from luna.cli.fit import main
    from luna.points.datamodule import PointsDataModule

    assert LunaDataModule(phantom_dir).cache_dir == phantom_dir.parent / f"{phantom_dir.name}-luna-cache"
    assert PointsDataModule(points_dir / "points.csv").cache_dir == points_dir / "luna-cache"
    monkeypatch.chdir(tmp_path)
    assert LunaDataModule(phantom=PhantomSpec(series=4)).data_dir.parent == Path("data_cache")
    # the points config keeps a user's cache beside their CSV, out of the code checkout
    with pytest.raises(SystemExit):
        main(
            [
                "--config",
                str(Path(__file__).parents[1] / "configs/points.yaml"),
                f"--data.points_csv={points_dir / 'points.csv'}",
                "--print_config",
            ]
        )
    assert yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["cache_dir"] is None


def test_setup_without_prepare_data_explains(phantom_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="call prepare_data"):
        LunaDataModule(phantom_dir, cache_dir=tmp_path).setup("fit")


@pytest.mark.parametrize(
    "argument, value",
    [("batch_size", -1), ("batch_size", 0), ("num_workers", -2), ("val_stride", 1), ("samples_per_epoch", 0)],
)
def test_bad_values_are_named(phantom_dir, tmp_path, argument, value):
    with pytest.raises(ValueError, match=f"{argument}={value}"):
        LunaDataModule(phantom_dir, cache_dir=tmp_path, **{argument: value})


def test_pure_split_and_order_helpers():
    train, val = stride_split(25, 10)
    assert list(val) == [0, 10, 20] and len(train) == 22
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    order = epoch_order(labels, 4, 50, seed=0, epoch=0)
    assert labels[order].sum() == 10 and np.array_equal(order, epoch_order(labels, 4, 50, seed=0, epoch=0))
    with pytest.raises(ValueError, match="needs positives"):
        epoch_order(np.zeros(5, dtype=bool), 1, 10, 0, 0)
