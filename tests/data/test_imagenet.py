"""ImageNet folder loader on a small generated JPEG tree: shapes, labels, determinism,
worker processes, resume, the array cache and errors for bad files."""

import json
import os
import shutil

import numpy as np
import pytest

from trainer.data.image_transforms import ImageDecodeError, normalize, random_resized_crop_box
from trainer.data.imagenet import (ArrayImages, ImageFolder, ImageLoader, build_cache,
                                   load_cache)
from trainer.data.synthetic_images import synthetic_arrays, wnid, write_synthetic_imagenet

CROP, RESIZE = 24, 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagenet")
    return write_synthetic_imagenet(folder, num_classes=4, train_per_class=6, val_per_class=3,
                                    size=40)


def loader(source, batch, train, **kwargs):
    return ImageLoader(source, batch, train, image_size=CROP, resize_size=RESIZE, **kwargs)


def test_folder_lists_sorted_classes_and_labels(root):
    train, val = ImageFolder(root, "train"), ImageFolder(root, "val")
    assert train.classes == val.classes == [wnid(c) for c in range(4)]
    assert len(train) == 24 and len(val) == 12
    for path, label in zip(val.paths, val.labels):
        assert os.path.basename(os.path.dirname(path)) == wnid(int(label))


def test_train_batches_shapes_and_determinism(root):
    source = ImageFolder(root, "train")
    a, b = loader(source, 8, True, seed=1), loader(source, 8, True, seed=1)
    images, labels = next(a)
    assert images.shape == (8, CROP, CROP, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and set(labels) <= set(range(4))
    np.testing.assert_array_equal(images, next(b)[0])
    other = next(loader(source, 8, True, seed=2))[0]
    assert not np.array_equal(images, other)
    assert normalize(images).shape == (8, 3, CROP, CROP)


def test_worker_processes_give_the_same_batches_in_order(root):
    source = ImageFolder(root, "train")
    serial = loader(source, 8, True, seed=4)
    expected = [next(serial) for _ in range(5)]
    with loader(source, 8, True, seed=4, workers=2, prefetch=3) as parallel:
        for images, labels in expected:
            got_images, got_labels = next(parallel)
            np.testing.assert_array_equal(got_images, images)
            np.testing.assert_array_equal(got_labels, labels)


def test_resume_mid_epoch(root):
    source = ImageFolder(root, "train")
    first = loader(source, 6, True, seed=7, dp_rank=1, dp_size=2)
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))
    expected = [next(first) for _ in range(4)]
    resumed = loader(source, 6, True, seed=7, dp_rank=1, dp_size=2)
    next(resumed)
    resumed.load_state_dict(state)
    for images, labels in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got[0], images)
        np.testing.assert_array_equal(got[1], labels)


def test_eval_pass_covers_every_image_once_with_padding(root):
    source = ImageFolder(root, "val")
    ranks = [loader(source, 8, False, dp_rank=r, dp_size=2) for r in range(2)]
    assert ranks[0].batches_per_epoch == 2
    labels = np.concatenate([next(ld)[1] for _ in range(2) for ld in ranks])
    assert (labels == -1).sum() == 4
    np.testing.assert_array_equal(labels[labels >= 0], source.labels)


def test_cache_reproduces_eval_pixels_exactly(root, tmp_path):
    source = ImageFolder(root, "val")
    cached = build_cache(source, tmp_path / "val", size=RESIZE, workers=2)
    assert cached.images.shape == (12, RESIZE, RESIZE, 3)
    direct, from_cache = next(loader(source, 12, False)), next(loader(cached, 12, False))
    np.testing.assert_array_equal(direct[0], from_cache[0])
    np.testing.assert_array_equal(direct[1], from_cache[1])
    stamp = os.stat(tmp_path / "val_images.npy").st_mtime_ns
    build_cache(source, tmp_path / "val", size=RESIZE)
    assert os.stat(tmp_path / "val_images.npy").st_mtime_ns == stamp
    train_batch = next(loader(load_cache(tmp_path / "val"), 4, True))[0]
    assert train_batch.shape == (4, CROP, CROP, 3)


@pytest.fixture
def broken(root, tmp_path):
    copy = shutil.copytree(root, tmp_path / "copy")
    return ImageFolder(copy, "val")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg_is_an_error_naming_it(broken, workers):
    victim = broken.paths[5]
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[:len(data) // 3])
    with loader(broken, 12, False, workers=workers) as ld:
        with pytest.raises(ImageDecodeError, match=os.path.basename(victim)):
            next(ld)


def test_missing_jpeg_is_an_error_naming_it(broken):
    os.remove(broken.paths[0])
    with pytest.raises(ImageDecodeError, match="missing.*" + os.path.basename(broken.paths[0])):
        next(loader(broken, 4, False))


def test_array_source_and_crop_boxes():
    images, labels = synthetic_arrays(num_classes=3, per_class=4, size=36)
    batch = next(loader(ArrayImages(images, labels), 6, False))
    assert batch[0].shape == (6, CROP, CROP, 3)
    np.testing.assert_array_equal(batch[1], labels[:6])
    rng = np.random.default_rng(0)
    for width, height in [(500, 375), (40, 40), (30, 200)]:
        for _ in range(50):
            left, top, right, bottom = random_resized_crop_box(width, height, rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            assert (right - left) * (bottom - top) >= 0.07 * width * height


def test_images_have_the_reference_channel_means_subtracted_and_no_std_division():
    """The reference (image_classification/tensorflow2/imagenet_preprocessing.py, _mean_image_subtraction)
    subtracts CHANNEL_MEANS (123.68, 116.78, 103.94) and divides by nothing: on the host and on the device."""
    from trainer.config import load_config
    from trainer.tasks import ImageTask
    u8 = np.random.default_rng(5).integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    want = (u8.astype(np.float64) - np.array([123.68, 116.78, 103.94])).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(normalize(u8), want, rtol=0, atol=1e-5)
    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "resnet_tiny.yaml")
    task = ImageTask(load_config(recipe, ["data.train_samples=640", "eval.samples=10"]), "CPU:0")
    images, _ = task.to_device(u8, np.zeros(3, np.int32), "CPU:0")
    np.testing.assert_allclose(images.numpy(), want, rtol=0, atol=1e-5)
