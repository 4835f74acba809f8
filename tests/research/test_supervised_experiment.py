"""The supervised-stage experiment's split: half of each defect class to train, the rest and every good image to
evaluate, disjoint, the same for the same seed, images and masks linked (never copied)."""

from __future__ import annotations

from research.supervised_experiment import split


def _names(root, sub):
    return {p.name for p in (root / "test" / sub).iterdir()} if (root / "test" / sub).is_dir() else set()


def test_split_halves_each_class_disjointly_and_repeatably(mvtec_dir, tmp_path):
    train, held, counts = split(mvtec_dir, tmp_path / "a", seed=0)
    assert counts == {"spot": {"train": 5, "eval": 5}}
    assert _names(train, "spot").isdisjoint(_names(held, "spot")) and len(_names(held, "good")) == 10
    assert not (train / "test" / "good").exists()
    for f in (train / "test" / "spot").iterdir():
        assert f.is_symlink() and (train / "ground_truth" / "spot" / f"{f.stem}_mask.png").is_symlink()
    again, _, _ = split(mvtec_dir, tmp_path / "b", seed=0)
    other, _, _ = split(mvtec_dir, tmp_path / "c", seed=1)
    assert _names(again, "spot") == _names(train, "spot") != _names(other, "spot")
