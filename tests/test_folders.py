"""Image-folder datasets (`folder`, `celebahq256`) and the synthetic stand-ins of smoke runs, on small image
sets these tests write."""

import numpy as np
import pytest
import torch
from PIL import Image

from ncp.data import folders, load_dataset, load_image_set, save_image_set


def _write(path, pixels: np.ndarray) -> None:
    """Save uint8 (H, W, 3) or (H, W) pixels as PNG or JPEG by suffix (JPEG at quality 100)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=100)


def _wide_image(width: int = 48, height: int = 24) -> np.ndarray:
    """Black left and right margins around a white centre square of side ``height``."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    left = (width - height) // 2
    pixels[:, left : left + height] = 255
    return pixels


def test_a_folder_is_read_recursively_centre_cropped_resized_and_split_by_a_seeded_fraction(tmp_path):
    # 10 images in nested folders, PNG and JPEG, of two sizes and aspect ratios
    for i in range(10):
        suffix = ".png" if i % 2 else ".jpg"
        pixels = _wide_image() if i < 5 else np.full((40, 40, 3), 255, dtype=np.uint8)
        _write(tmp_path / f"sub{i % 3}" / "deeper" / f"im{i}{suffix}", pixels)
    (tmp_path / "notes.txt").write_text("not an image")  # ignored: not PNG/JPEG
    options = {"image_size": 16, "grayscale": False, "test_fraction": 0.3, "split_seed": 5}
    train = load_dataset("folder", root=tmp_path, split="train", folder_options=options)
    test = load_dataset("folder", root=tmp_path, split="test", folder_options=options)
    assert train.images.shape == (7, 3, 16, 16) and test.images.shape == (3, 3, 16, 16)
    # every wide image's black margins are cropped away, so each image is white (JPEG: nearly)
    assert train.images.min() >= 250 and test.images.min() >= 250
    # the same seed gives the same split; another seed another one (checked on the file order)
    paths = folders.list_images(tmp_path)
    assert len(paths) == 10
    same = folders.folder_split(10, "test", 0.3, split_seed=5)
    assert np.array_equal(same, folders.folder_split(10, "test", 0.3, split_seed=5))
    assert not np.array_equal(same, folders.folder_split(10, "test", 0.3, split_seed=6))
    assert set(same).isdisjoint(folders.folder_split(10, "train", 0.3, split_seed=5))


def test_a_grayscale_folder_has_one_channel(tmp_path):
    for i in range(4):
        _write(tmp_path / f"{i}.png", np.full((8, 8, 3), 60 * i, dtype=np.uint8))
    options = {"image_size": None, "grayscale": True, "test_fraction": 0.25, "split_seed": 0}
    train = load_dataset("folder", root=tmp_path, split="train", folder_options=options)
    assert train.images.shape == (3, 1, 8, 8) and train.images.dtype == torch.uint8


def test_a_truncated_image_names_the_file(tmp_path):
    _write(tmp_path / "good.png", np.zeros((8, 8, 3), dtype=np.uint8))
    _write(tmp_path / "cut.jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # a download that stopped half-way
    with pytest.raises(ValueError, match=r"cut\.jpg: unreadable or truncated image") as error:
        folders.read_images(folders.list_images(tmp_path), 8, grayscale=False)
    assert "\n" not in str(error.value)


def test_an_unreadable_file_with_an_image_suffix_names_the_file(tmp_path):
    (tmp_path / "fake.png").write_text("this is not a PNG")
    with pytest.raises(ValueError, match=r"fake\.png: unreadable or truncated image"):
        folders.read_images(folders.list_images(tmp_path), 8, grayscale=False)


def test_an_empty_folder_is_an_error_naming_the_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"empty holds no \.png/\.jpg/\.jpeg files"):
        load_dataset("folder", root=tmp_path / "empty", split="train")


def test_mixed_sizes_without_a_resize_name_the_odd_file(tmp_path):
    _write(tmp_path / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    _write(tmp_path / "b.png", np.zeros((8, 12, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"b\.png is 12x8 but .*a\.png is 8x8: set data.image_size"):
        folders.read_images(folders.list_images(tmp_path), None, grayscale=False)


def test_celebahq256_reads_nvae_split_folders_at_256(tmp_path):
    root = tmp_path / "data"
    for split, count in (("train", 3), ("validation", 2)):
        for i in range(count):
            _write(root / "celebahq256" / split / f"{i}.png", np.full((300, 300, 3), 10 * i, dtype=np.uint8))
    train = load_dataset("celebahq256", root=root, split="train")
    valid = load_dataset("celebahq256", root=root, split="validation")
    assert train.images.shape == (3, 3, 256, 256) and valid.images.shape == (2, 3, 256, 256)
    assert int(valid.images[1].float().mean().round()) == 10  # file 1 of validation, resized, not mixed up


def test_celebahq256_splits_a_flat_numbered_folder_by_file_number(tmp_path, monkeypatch):
    # 30,000 images are too many for a test: the train part is cut to 3 of 5 numbered files. Files are
    # numbered as CelebAMask-HQ's (0.jpg, 1.jpg, ..., 10.jpg sorts before 2.jpg as text).
    monkeypatch.setattr(folders, "CELEBAHQ_NUM_TRAIN", 3)
    for number in (0, 1, 2, 10, 11):
        _write(tmp_path / "celebahq256" / f"{number}.png", np.full((64, 64, 3), number, dtype=np.uint8))
    valid = load_dataset("celebahq256", root=tmp_path, split="validation")
    # numeric order puts 10 and 11 last: they are the validation images (text order would pick 2 and 11)
    assert valid.images.shape == (2, 3, 256, 256)
    assert sorted(int(v) for v in valid.images.float().mean(dim=(1, 2, 3)).round()) == [10, 11]


def test_celebahq256_without_its_files_says_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="celebahq256/train and .*celebahq256/validation"):
        load_dataset("celebahq256", root=tmp_path, split="train")


@pytest.mark.parametrize(
    ("name", "split", "shape", "binary"),
    [
        ("celeba64", "valid", (3, 64, 64), False),
        ("cifar10", "test", (3, 32, 32), False),
        ("celebahq256", "validation", (3, 256, 256), False),
        ("mnist", "train", (1, 32, 32), True),  # 28x28 files, padded to 32 as the real ones
    ],
)
def test_a_missing_dataset_gets_a_flagged_stand_in_of_its_exact_shape_only_when_asked(
    tmp_path, name, split, shape, binary
):
    with pytest.raises(FileNotFoundError):
        load_dataset(name, root=tmp_path, split=split, limit=5)
    stand_in = load_dataset(name, root=tmp_path, split=split, limit=5, synthetic_if_missing=True)
    assert stand_in.synthetic and stand_in.binary == binary
    assert stand_in.images.shape == (5, *shape) and stand_in.images.dtype == torch.uint8
    assert stand_in.images.float().std() > 10  # not a constant image: the models have something to fit
    # the flag survives the .pt file the later stages read
    save_image_set(stand_in, tmp_path / "split.pt")
    assert load_image_set(tmp_path / "split.pt").synthetic


def test_real_files_are_used_even_when_a_stand_in_is_allowed(tmp_path):
    for i in range(4):
        _write(tmp_path / f"{i}.png", np.full((8, 8, 3), 50, dtype=np.uint8))
    options = {"image_size": 8, "grayscale": False, "test_fraction": 0.25, "split_seed": 0}
    real = load_dataset(
        "folder", root=tmp_path, split="train", folder_options=options, synthetic_if_missing=True
    )
    assert not real.synthetic and int(real.images.float().mean()) == 50
