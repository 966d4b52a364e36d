"""ImageNet classification data: the folder layout, a uint8 array cache, and the batch loader.

Layout: `ROOT/train/<wnid>/*.JPEG` and `ROOT/val/<wnid>/*.JPEG`. Class k is the k-th wnid in
sorted order of `ROOT/train` (of the split itself when there is no train folder), so every
split labels a wnid the same way.

Object boxes (optional): `ROOT/imagenet_2012_bounding_boxes.csv`, the file TF's ImageNet pipeline
reads (models/research/inception build_imagenet_data.py; process_bounding_boxes.py writes it from
ImageNet's ILSVRC2012_bbox_train_v2 XMLs): one line per box, `<JPEG file name>,<xmin>,<ymin>,<xmax>,
<ymax>` in coordinates relative to the image (0..1), several lines for an image with several
objects. The training crop must cover 10% of one of an image's boxes; an image the file does not
list, or every image when there is no file, counts as one box covering the whole image (as the
reference does for a record without boxes).

The loader yields `(images, labels)`: images uint8 NHWC RGB (normalise on the device with
`image_transforms.normalize` or its equivalent), labels int32 with -1 marking padding rows.
Augmentation draws come from a generator keyed by (seed, epoch, sample index), so a batch is
the same whatever the number of worker processes and however often the run resumed.
"""

import collections
import multiprocessing
import os

import numpy as np
from PIL import Image

from trainer.data.image_transforms import decode_image, eval_transform, train_transform
from trainer.data.sampler import ShardedSampler

IMAGE_SUFFIXES = (".jpeg", ".jpg")
BOXES_FILE = "imagenet_2012_bounding_boxes.csv"


def read_boxes(path):
    """{JPEG file name: [(xmin, ymin, xmax, ymax), ...]} from a box file; a bad line is a ValueError
    naming the file and line."""
    boxes = collections.defaultdict(list)
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            name, *fields = line.strip().split(",")
            try:
                x0, y0, x1, y1 = (float(v) for v in fields)
                ok = 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{path}:{number}: expected 'file name,xmin,ymin,xmax,ymax' with "
                                 f"0 <= min <= max <= 1, got {line.strip()!r}")
            boxes[name].append((x0, y0, x1, y1))
    return dict(boxes)


class ImageFolder:
    """The JPEG files of one split, in sorted (class, file name) order, with their labels and the
    object boxes of ROOT/imagenet_2012_bounding_boxes.csv when it exists."""

    def __init__(self, root, split):
        self.root = os.fspath(root)
        folder = os.path.join(self.root, split)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"ImageNet split folder missing: {folder}")
        reference = os.path.join(self.root, "train")
        reference = reference if os.path.isdir(reference) else folder
        self.classes = sorted(e.name for e in os.scandir(reference) if e.is_dir())
        number = {wnid: k for k, wnid in enumerate(self.classes)}
        self.paths, labels = [], []
        for wnid in sorted(e.name for e in os.scandir(folder) if e.is_dir()):
            if wnid not in number:
                raise ValueError(f"{os.path.join(folder, wnid)}: class not among {reference}")
            files = sorted(e.name for e in os.scandir(os.path.join(folder, wnid))
                           if e.name.lower().endswith(IMAGE_SUFFIXES))
            self.paths.extend(os.path.join(folder, wnid, name) for name in files)
            labels.extend([number[wnid]] * len(files))
        if not self.paths:
            raise FileNotFoundError(f"no JPEG files under {folder}")
        self.labels = np.asarray(labels, np.int32)
        boxes_file = os.path.join(self.root, BOXES_FILE)
        self._boxes = read_boxes(boxes_file) if os.path.isfile(boxes_file) else {}

    def __len__(self):
        return len(self.paths)

    def item(self, index):
        """What a worker needs to produce sample `index`: its file path."""
        return self.paths[index]

    def boxes(self, index):
        """The annotated object boxes of sample `index` (relative xmin, ymin, xmax, ymax); [] if none."""
        return self._boxes.get(os.path.basename(self.paths[index]), [])


class ArrayImages:
    """Images already decoded into a uint8 (N, H, W, 3) array (in memory or memory-mapped)."""

    def __init__(self, images, labels):
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, np.int32)

    def __len__(self):
        return len(self.images)

    def item(self, index):
        """What a worker needs to produce sample `index`: a copy of its pixels."""
        return np.array(self.images[index])

    def boxes(self, index):
        """No object boxes: a training crop samples from the whole image."""
        return []


def _transform_chunk(task):
    """Worker entry: transform the items of one chunk (with their object boxes) into a uint8
    (n, S, S, 3) array."""
    items, boxes, keys, train, image_size, resize_size = task
    out = np.empty((len(items), image_size, image_size, 3), np.uint8)
    for row, (item, item_boxes, key) in enumerate(zip(items, boxes, keys)):
        image = decode_image(item) if isinstance(item, str) else Image.fromarray(item)
        if train:
            out[row] = train_transform(image, np.random.default_rng(key), image_size, item_boxes)
        else:
            out[row] = eval_transform(image, resize_size, image_size)
    return out


def _pool(workers):
    """A process pool that does not fork the (possibly multi-threaded) trainer process."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method).Pool(workers)


class ImageLoader:
    """Endless iterator of this rank's `(images, labels)` batches from an ImageFolder or
    ArrayImages source.

    `train=True`: shuffled every epoch, the reference's distorted-box crop (against the source's
    object boxes) + flip to `image_size`, incomplete last batch dropped. `train=False`: file
    order, resize to `resize_size` + centre crop `image_size`, last batch padded (zero images,
    label -1) so one pass of `batches_per_epoch` batches covers every image exactly once. With
    `workers` > 0 a process pool decodes up to `prefetch` batches ahead, each batch split over the
    workers; results keep batch order.
    `state_dict()` names the next batch to be returned; prefetched work is discarded on
    `load_state_dict()`.
    """

    def __init__(self, source, global_batch_size, train, dp_rank=0, dp_size=1, seed=0,
                 image_size=224, resize_size=256, workers=0, prefetch=2):
        self._pool = None
        self._pending = collections.deque()
        self.source = source
        self.train = train
        self.seed = seed
        self.image_size = image_size
        self.resize_size = resize_size
        self.workers = workers
        self.prefetch = max(prefetch, 1) if workers else 1
        self.sampler = ShardedSampler(len(source), global_batch_size, dp_rank, dp_size,
                                      shuffle=train, seed=seed, drop_last=train)
        self._ahead = (0, 0)

    @property
    def batches_per_epoch(self):
        """Global batches in one pass over the source."""
        return self.sampler.batches_per_epoch

    @property
    def epoch(self):
        """Epoch of the next batch."""
        return self.sampler.epoch

    def _submit(self, epoch, batch):
        indices = self.sampler.local_indices(epoch, batch)
        real = indices[indices >= 0]
        tasks = [([self.source.item(int(i)) for i in part],
                  [self.source.boxes(int(i)) if self.train else [] for i in part],
                  [(self.seed, epoch, int(i)) for i in part],
                  self.train, self.image_size, self.resize_size)
                 for part in np.array_split(real, max(self.workers, 1)) if len(part)]
        if self.workers:
            if self._pool is None:
                self._pool = _pool(self.workers)
            handle = self._pool.map_async(_transform_chunk, tasks)
            self._pending.append((indices, handle.get))
        else:
            self._pending.append((indices, lambda: [_transform_chunk(t) for t in tasks]))

    def __iter__(self):
        return self

    def __next__(self):
        if not self._pending:
            self._ahead = (self.sampler.epoch, self.sampler.batch)
        while len(self._pending) < self.prefetch:
            self._submit(*self._ahead)
            self._ahead = self.sampler.position_after(*self._ahead)
        indices, result = self._pending.popleft()
        try:
            chunks = result()
        except BaseException:
            self._pending.clear()
            raise
        self.sampler.advance()
        images = np.zeros((len(indices), self.image_size, self.image_size, 3), np.uint8)
        real = indices >= 0
        if chunks:
            images[real] = np.concatenate(chunks)
        labels = np.where(real, self.source.labels[np.maximum(indices, 0)], -1).astype(np.int32)
        return images, labels

    def state_dict(self):
        """Position of the next batch (JSON-serialisable)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state):
        """Resume at the batch `state` names, dropping anything prefetched."""
        self.sampler.load_state_dict(state)
        self._pending.clear()

    def close(self):
        """Stop the worker processes."""
        self._pending.clear()
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


def cache_paths(prefix):
    """The image and label files of the array cache at `prefix`."""
    return os.fspath(prefix) + "_images.npy", os.fspath(prefix) + "_labels.npy"


def load_cache(prefix):
    """The array cache at `prefix`, memory-mapped, as an ArrayImages source."""
    images_file, labels_file = cache_paths(prefix)
    for path in (images_file, labels_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image cache file missing: {path}")
    return ArrayImages(np.load(images_file, mmap_mode="r"), np.load(labels_file))


def build_cache(folder, prefix, size=256, workers=0, chunk=64):
    """Decode an ImageFolder once into a uint8 (N, size, size, 3) .npy cache and return it.

    Each image has its shorter side resized to `size` and is centre-cropped to a square, so the
    evaluation transform with `resize_size=size` on the cache gives exactly the pixels it gives
    on the JPEGs; training crops then come from that square. An existing cache whose labels and
    size match is reused.
    """
    images_file, labels_file = cache_paths(prefix)
    try:
        cached = load_cache(prefix)
        same_labels = np.array_equal(cached.labels, folder.labels)
        if cached.images.shape[1:3] == (size, size) and same_labels:
            return cached
    except (OSError, ValueError):
        pass
    tasks = [([folder.item(i) for i in range(start, min(start + chunk, len(folder)))],
              [[]] * min(chunk, len(folder) - start), [None] * min(chunk, len(folder) - start),
              False, size, size)
             for start in range(0, len(folder), chunk)]
    images = np.lib.format.open_memmap(images_file + ".tmp", "w+", np.uint8,
                                       (len(folder), size, size, 3))
    pool = _pool(workers) if workers else None
    try:
        results = pool.imap(_transform_chunk, tasks) if pool else map(_transform_chunk, tasks)
        for start, block in zip(range(0, len(folder), chunk), results):
            images[start:start + len(block)] = block
        images.flush()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    del images
    with open(labels_file + ".tmp", "wb") as f:
        np.save(f, folder.labels)
    os.replace(images_file + ".tmp", images_file)
    os.replace(labels_file + ".tmp", labels_file)
    return load_cache(prefix)
