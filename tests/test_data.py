"""The digits data set: shapes, ranges, interpolation and the stratified split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdvar_lib.data.digits import (
    DIGITS_IMAGE_SIZE,
    iterate_minibatches,
    load_digits_raw,
    load_digits_split,
    stratified_split_indices,
    to_unit_range,
    upsample_digits,
)


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


def test_shapes_and_range(split):
    assert split.train_img_B3HW.shape[1:] == (3, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE)
    assert split.train_img_B3HW.shape[0] + split.heldout_img_B3HW.shape[0] == 1797
    for img in (split.train_img_B3HW, split.heldout_img_B3HW):
        assert img.dtype == torch.float32
        assert float(img.min()) >= -1.0 and float(img.max()) <= 1.0
        # the background of the digits is black: -1 must occur, and bright strokes near +1
        assert float(img.min()) == -1.0 and float(img.max()) > 0.9
        assert torch.equal(img[:, 0], img[:, 1]) and torch.equal(img[:, 0], img[:, 2])
    assert split.train_label_B.dtype == torch.int64


def test_split_is_disjoint_stratified_and_seeded(split):
    assert not set(split.train_index.tolist()) & set(split.heldout_index.tolist())
    assert len(split.train_index) + len(split.heldout_index) == 1797
    _, labels = load_digits_raw()
    for cls in range(10):
        n_cls = int((labels == cls).sum())
        n_held = int((split.heldout_label_B == cls).sum())
        assert n_held == round(0.15 * n_cls)
    again = load_digits_split()
    assert np.array_equal(again.heldout_index, split.heldout_index)
    other = load_digits_split(seed=1)
    assert not np.array_equal(other.heldout_index, split.heldout_index)


def test_images_match_raw_digits(split):
    raw, labels = load_digits_raw()
    i = int(split.heldout_index[3])
    assert int(split.heldout_label_B[3]) == int(labels[i])
    # downsampling the 16x16 image by 2x2 averaging approximately recovers the raw 8x8 digit
    img = to_unit_range(split.heldout_img_B3HW[3, 0])
    down = torch.nn.functional.avg_pool2d(img[None, None], 2)[0, 0].reshape(-1)
    ref = torch.from_numpy(raw[i]).reshape(-1) / 16
    assert float((down - ref).abs().mean()) < 0.1
    assert float(torch.corrcoef(torch.stack([down, ref]))[0, 1]) > 0.95


def test_upsample_is_bilinear_on_known_input():
    raw = torch.zeros(1, 2, 2)
    raw[0, 0, 0] = 16.0
    out = upsample_digits(raw, size=4)
    assert out.shape == (1, 3, 4, 4)
    expected = torch.nn.functional.interpolate(torch.tensor([[[[1.0, 0], [0, 0]]]]), size=(4, 4), mode="bilinear")
    assert torch.allclose(to_unit_range(out[0, 0]), expected[0, 0])
    assert float(out[0, 0, 0, 0]) == 1.0 and float(out[0, 0, 3, 3]) == -1.0


@pytest.mark.parametrize("bad", [np.zeros((2, 8)), np.full((1, 8, 8), 17.0), np.full((1, 8, 8), -1.0)])
def test_upsample_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        upsample_digits(bad)


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError):
        stratified_split_indices(np.zeros(10, dtype=int), heldout_fraction=1.0)
    with pytest.raises(ValueError):
        stratified_split_indices(np.zeros((2, 5), dtype=int))


def test_minibatches_cover_everything_deterministically():
    batches = list(iterate_minibatches(10, 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    again = list(iterate_minibatches(10, 4, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert [len(b) for b in iterate_minibatches(10, 4, None, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError):
        list(iterate_minibatches(0, 4, None))


def test_bad_arguments_name_the_argument_and_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="size"):
        upsample_digits(np.zeros((1, 8, 8)), size=True)
    with pytest.raises(ValueError, match="size"):
        upsample_digits(np.zeros((1, 8, 8)), size=0)
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_minibatches(10, 0, None))
    with pytest.raises(TypeError, match="num_items"):
        list(iterate_minibatches(10.0, 4, None))
    with pytest.raises(ValueError, match="heldout_fraction"):
        stratified_split_indices(np.zeros(10, dtype=int), heldout_fraction=0.0)
