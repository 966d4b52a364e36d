"""ImageNet folder loader on a small generated JPEG tree: shapes, labels, determinism,
worker processes, resume, the array cache and errors for bad files."""

import json
import os
import shutil

import numpy as np
import pytest

from PIL import Image

from trainer.data.image_transforms import ImageDecodeError, normalize, sample_distorted_box
from trainer.data.imagenet import (BOXES_FILE, ArrayImages, ImageFolder, ImageLoader, build_cache,
                                   load_cache, read_boxes)
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
            left, top, right, bottom = sample_distorted_box(width, height, (), rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            assert (right - left) * (bottom - top) >= 0.05 * width * height


class Script:
    """A generator that returns scripted draws and records the bound of each integer draw."""

    def __init__(self, floats, ints):
        self.floats, self.ints, self.bounds = list(floats), list(ints), []

    def random(self):
        return self.floats.pop(0)

    def integers(self, low, high):
        assert low == 0
        self.bounds.append(high)
        return self.ints.pop(0)


# Golden cases worked by hand from TF's kernel (tensorflow/core/kernels/image/sample_distorted_bounding_box_op.cc,
# GenerateRandomCrop and SatisfiesOverlapConstraints) with the reference's arguments: aspect = 0.75 + 0.58 u; height
# from round(sqrt(min_area / aspect)) up to the tallest crop that fits, drawn on the closed range; width =
# round(height * aspect); one row more if the rounded area falls short; offsets drawn from [0, size - crop).
@pytest.mark.parametrize("size,boxes,floats,ints,bounds,crop", [
    # 500 x 375: aspect 1.04, height 95..375 (+100), width round(195 * 1.04) = 203
    ((500, 375), (), [0.5], [100, 7, 11], [281, 180, 297], (11, 7, 214, 202)),
    # 100 x 400 at aspect 1.33: the tallest crop whose width rounds to <= 100 is 75 rows; full width, so no x draw
    ((100, 400), (), [0.999999], [36, 5], [37, 325], (0, 5, 100, 80)),
    # 30 x 30 at aspect 1.2: 6 x 7 = 42 rounds below the 45-pixel minimum, so 7 rows x 8 columns, inside the
    # 15 x 15 object (without it the whole image is the object, and 56 pixels cover less than 10% of it)
    ((30, 30), [(0.0, 0.0, 0.5, 0.5)], [(1.2 - 0.75) / 0.58], [0, 3, 4], [20, 23, 22], (4, 3, 12, 10)),
    # an object in the top-left 20 x 20 pixels: the first crop covers 36 / 400 < 0.1 of it, the second 49 / 400
    ((100, 100), [(0.0, 0.0, 0.2, 0.2)], [0.5, 0.5], [0, 14, 14, 0, 13, 13], [75, 78, 77] * 2, (13, 13, 36, 35)),
])
def test_distorted_box_follows_tensorflows_sampling(size, boxes, floats, ints, bounds, crop):
    rng = Script(floats, ints)
    assert sample_distorted_box(*size, boxes, rng) == crop
    assert rng.bounds == bounds and not rng.floats and not rng.ints


def test_distorted_box_falls_back_to_the_whole_image_after_100_attempts():
    """An object smaller than a pixel is never covered: 100 attempts, then the whole image."""
    class Constant:
        calls = 0

        def random(self):
            Constant.calls += 1
            return 0.5

        def integers(self, low, high):
            return 0
    assert sample_distorted_box(100, 100, [(0.5, 0.5, 0.505, 0.505)], Constant()) == (0, 0, 100, 100)
    assert Constant.calls == 100


def test_distorted_boxes_keep_the_references_ranges():
    """Drawn with the data generator: width = round(height * aspect) with aspect in [0.75, 1.33], offsets short of
    the last position; without boxes the whole image is the object, so crops cover 10%-100% of it; with a small
    object, at least 10% of it is covered and crops go down to 5% of the image (below torchvision's 8%)."""
    rng = np.random.default_rng(1)

    def draw(boxes, n):
        crops = [sample_distorted_box(200, 150, boxes, rng) for _ in range(n)]
        w, h = (np.array([c[i + 2] - c[i] for c in crops]) for i in (0, 1))
        assert np.all((w >= np.round(0.75 * h)) & (w <= np.round(1.33 * h)))
        short_of_the_last = lambda offset, room: offset < room or offset == room == 0
        assert all(short_of_the_last(c[0], 200 - w_) and short_of_the_last(c[1], 150 - h_) for c, w_, h_ in zip(crops, w, h))
        return crops, w * h / (200 * 150)

    crops, area = draw((), 2000)
    assert area.min() >= 0.1 and area.max() <= 1 and (area < 0.15).mean() > 0.03
    crops, area = draw([(0.8, 0.7, 1.0, 1.0)], 2000)
    covered = [max(0, min(r, 200) - max(l, 160)) * max(0, min(b, 150) - max(t, 105)) / (40 * 45) for l, t, r, b in crops]
    assert min(covered) >= 0.1 and area.min() >= 0.05 and (area < 0.08).mean() > 0.01


def test_box_file_is_read_and_reaches_the_training_crop(root, tmp_path):
    """ROOT/imagenet_2012_bounding_boxes.csv (process_bounding_boxes.py's format: file name, xmin, ymin, xmax, ymax,
    relative). A box under a pixel can never be covered, so its image is trained on whole (resized, maybe flipped);
    images the file does not list sample their crop from the whole image."""
    copy = shutil.copytree(root, tmp_path / "copy")
    train = ImageFolder(copy, "train")
    listed = [os.path.basename(p) for p in train.paths[::2]]
    with open(copy / BOXES_FILE, "w") as f:
        f.writelines(f"{name},0.5000,0.5000,0.5050,0.5050\n{name},0.5,0.5,0.501,0.501\n" for name in listed)
        f.write(f"{os.path.basename(train.paths[1])},0.1,0.2,0.9,0.8\n")
    train = ImageFolder(copy, "train")
    assert train.boxes(0) == [(0.5, 0.5, 0.505, 0.505), (0.5, 0.5, 0.501, 0.501)]
    assert train.boxes(1) == [(0.1, 0.2, 0.9, 0.8)] and train.boxes(3) == []
    ld = loader(train, 24, True, seed=3)
    images, _ = next(ld)
    order = ld.sampler.local_indices(0, 0)
    whole = 0
    for image, index in zip(images, order):
        full = np.asarray(Image.open(train.paths[index]).convert("RGB").resize((CROP, CROP), Image.Resampling.BILINEAR))
        is_whole = np.array_equal(image, full) or np.array_equal(image, full[:, ::-1])
        assert is_whole or index % 2, index
        whole += is_whole
    assert whole == 12


@pytest.mark.parametrize("line,problem", [("a.JPEG,0.1,0.2,0.3", "a.JPEG,0.1,0.2,0.3"),
                                          ("a.JPEG,0.1,0.2,x,0.4", "x"), ("a.JPEG,0.5,0.2,0.3,0.4", "0.5"),
                                          ("a.JPEG,0.1,0.2,0.3,1.2", "1.2")])
def test_bad_box_file_line_is_one_error_naming_file_and_line(tmp_path, line, problem):
    path = tmp_path / BOXES_FILE
    path.write_text("b.JPEG,0,0,1,1\n" + line + "\n")
    with pytest.raises(ValueError, match=f"{BOXES_FILE}:2: .*{problem}") as info:
        read_boxes(str(path))
    assert "\n" not in str(info.value)


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


def test_data_workers_prepare_the_same_batches_and_end_with_the_run():
    """data.workers N: N processes prepare the image batches ahead; the batches are the ones the training process
    makes itself (augmentation draws are keyed by sample), evaluation too, and the processes end with the loader."""
    import multiprocessing
    from trainer.config import load_config
    from trainer.tasks import ImageTask
    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "resnet_tiny.yaml")
    sets = ["data.train_samples=640", "eval.samples=40", "data.image_size=16"]
    tasks = [ImageTask(load_config(recipe, sets + [f"data.workers={w}"]), "CPU:0") for w in (0, 2)]
    try:
        for _ in range(3):
            (a, la), (b, lb) = (t.next_batch() for t in tasks)
            assert a.std() > 0
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(la, lb)
        for (a, la, na), (b, lb, nb) in zip(*(list(t.eval_batches(16)) for t in tasks)):
            np.testing.assert_array_equal(a, b)
            assert (na, list(la)) == (nb, list(lb))
        assert len(multiprocessing.active_children()) >= 2
    finally:
        for t in tasks: t.loader.close()
    assert multiprocessing.active_children() == []
