"""Nearest-neighbour figure (paper Fig. 4): known answers for features, KD-tree search and the PNG."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ncp.data import ImageSet, save_image_set
from ncp.metrics.neighbours import (
    nearest_neighbours,
    neighbour_features,
    neighbour_grid,
    write_neighbour_figure,
)

torch.set_num_threads(1)


def random_images(n, channels=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8)


def test_features_shape_range_and_identity_resize():
    images = random_images(5, channels=3, size=64)
    features = neighbour_features(images, resize=64, crop=40)
    assert features.dtype == np.float32 and features.shape == (5, 3 * 40 * 40)
    assert features.min() >= 0.0 and features.max() <= 1.0
    # At 64x64 the resize is the identity, so features are exactly the centre 40x40 pixels / 255.
    expected = images[:, :, 12:52, 12:52].float().numpy().reshape(5, -1) / 255.0
    np.testing.assert_allclose(features, expected, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_each_query_finds_its_exact_copy(channels):
    queries = random_images(4, channels=channels, size=28, seed=1)
    # Copies of the queries sit, in order, at positions 10..13 among random images.
    train = torch.cat(
        [random_images(10, channels, 28, seed=2), queries, random_images(6, channels, 28, seed=3)]
    )
    indices, distances = nearest_neighbours(neighbour_features(queries), neighbour_features(train), k=3)
    assert indices.dtype == np.int64 and indices.shape == (4, 3) and distances.shape == (4, 3)
    np.testing.assert_array_equal(indices[:, 0], np.arange(10, 14))
    np.testing.assert_array_equal(distances[:, 0], 0.0)
    assert (distances[:, 1] > 1.0).all()  # random images are far from one another


def test_kd_tree_matches_brute_force():
    rng = np.random.default_rng(0)
    queries, train = rng.random((7, 12)), rng.random((50, 12))
    indices, distances = nearest_neighbours(queries, train, k=5)
    pairwise = np.sqrt(((queries[:, None, :] - train[None, :, :]) ** 2).sum(-1))  # (7, 50)
    expected_indices = np.argsort(pairwise, axis=1)[:, :5]
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, np.take_along_axis(pairwise, expected_indices, axis=1), rtol=1e-12)


def test_only_the_centre_crop_counts():
    # 128x128 -> 64x64 halves; the 40x40 crop of the 64x64 image covers rows/cols 24..103 at 128.
    base = random_images(1, channels=3, size=128, seed=4)
    outside = base.clone()
    outside[:, :, :16] = 255 - outside[:, :, :16]  # top border, far from the crop
    outside[:, :, :, -16:] = 0
    inside = base.clone()
    inside[:, :, 60:68, 60:68] = 255 - inside[:, :, 60:68, 60:68]
    train = torch.cat([outside, inside])
    features = neighbour_features(train)
    _, distances = nearest_neighbours(neighbour_features(base), features, k=2)
    base_features = neighbour_features(base)
    assert np.linalg.norm(features[0] - base_features[0]) == 0.0
    assert np.linalg.norm(features[1] - base_features[0]) > 0.5
    np.testing.assert_array_equal(distances[0, 0], 0.0)
    # Without the crop the border change would be seen.
    assert np.linalg.norm(neighbour_features(outside, 64, 64) - neighbour_features(base, 64, 64)) > 1.0


def test_grid_rows_are_query_then_neighbours():
    queries, train = random_images(2, 1, 8, seed=5), random_images(6, 1, 8, seed=6)
    grid = neighbour_grid(queries, train, np.array([[3, 1], [0, 5]]))
    assert grid.shape == (6, 1, 8, 8) and grid.dtype == torch.float32
    expected = torch.stack([queries[0], train[3], train[1], queries[1], train[0], train[5]]).float() / 255
    torch.testing.assert_close(grid, expected)


@pytest.mark.parametrize("channels,size,binary", [(1, 32, True), (3, 16, False)])
def test_write_neighbour_figure_png_size(tmp_path: Path, channels, size, binary):
    train = random_images(20, channels, size, seed=7)
    samples = torch.cat([train[[4, 9, 2]], random_images(2, channels, size, seed=8)])
    samples_path, train_path = tmp_path / "samples.pt", tmp_path / "train.pt"
    torch.save({"method": "sir", "images": samples, "latents": [torch.zeros(5, 2)]}, samples_path)
    save_image_set(ImageSet(train, None, "toy", "train", binary), train_path)
    out_png = tmp_path / "figs" / "neighbours.png"
    num_queries, k = 3, 4
    summary = write_neighbour_figure(samples_path, train_path, out_png, num_queries, k, 64, 40, seed=0)
    assert summary["num_queries"] == 3 and summary["num_neighbours"] == 4
    assert summary["resize"] == 64 and summary["crop"] == 40
    assert summary["mean_nearest_distance"] == 0.0  # the first three samples are training images
    assert summary["nearest_train_indices"] == [4, 9, 2]
    # make_grid (padding=2): (1 + k) columns and num_queries rows of images, 2 px between and around.
    padding = 2
    expected_width = (1 + k) * (size + padding) + padding
    expected_height = num_queries * (size + padding) + padding
    with Image.open(out_png) as png:
        assert png.size == (expected_width, expected_height)
    assert [p.name for p in out_png.parent.iterdir()] == ["neighbours.png"]  # no temp file left


def test_bad_inputs_raise():
    images = random_images(3, 3, 32)
    with pytest.raises(ValueError, match="crop"):
        neighbour_features(images, resize=32, crop=40)
    with pytest.raises(ValueError, match="uint8"):
        neighbour_features(images.float())
    with pytest.raises(ValueError, match="uint8"):
        neighbour_features(images[0])
    with pytest.raises(ValueError, match="k=4"):
        nearest_neighbours(np.zeros((2, 5)), np.zeros((3, 5)), k=4)
    with pytest.raises(ValueError, match="dims"):
        nearest_neighbours(np.zeros((2, 5)), np.zeros((3, 6)), k=1)
    with pytest.raises(ValueError, match="queries are"):
        neighbour_grid(random_images(1, 1, 8), random_images(2, 3, 8), np.array([[0]]))
