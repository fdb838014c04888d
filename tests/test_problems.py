"""studies.lib.problems: the problems derived from Fashion-MNIST (a fixed pixel permutation, merged labels)."""

from __future__ import annotations

import pytest
import torch


def test_derived_problems(toy_data):
    from studies.lib import problems

    p = problems.permute_pixels(toy_data, seed=3)
    perm = torch.randperm(toy_data.x_train.shape[1], generator=torch.Generator().manual_seed(3))
    assert not torch.equal(perm, torch.arange(len(perm)))
    for a, b in [(p.x_train, toy_data.x_train), (p.x_val, toy_data.x_val), (p.x_test, toy_data.x_test)]:
        assert torch.equal(a, b[:, perm])  # one permutation of the columns for every split
    assert torch.equal(p.y_train, toy_data.y_train) and torch.equal(p.y_test, toy_data.y_test)
    assert torch.equal(problems.permute_pixels(toy_data, seed=3).x_train, p.x_train)  # fixed by its seed
    assert not torch.equal(problems.permute_pixels(toy_data, seed=4).x_train, p.x_train)

    before = (toy_data.x_train.clone(), toy_data.y_train.clone())
    m = problems.merge_labels(toy_data)
    assert torch.equal(m.y_train, toy_data.y_train // 2) and torch.equal(m.y_val, toy_data.y_val // 2)
    assert torch.equal(m.y_test, toy_data.y_test // 2)
    assert set(m.y_train.tolist()) == set(range(5)) and m.x_train is toy_data.x_train
    assert torch.equal(before[0], toy_data.x_train) and torch.equal(before[1], toy_data.y_train)  # the base is untouched
    with pytest.raises(ValueError):
        problems.merge_labels(toy_data, classes=3)
    assert problems.PROBLEMS["fmnist"](toy_data) is toy_data
    assert problems.distance_key("fmnist", "perm") == "D-fmnist-vs-perm"
