"""Image decoding and the ResNet-50 ImageNet transforms, as pure functions on Pillow images.

Outputs are uint8 HWC RGB arrays; normalisation to float (`normalize`: the channel means
subtracted, as the reference does) is left to the consumer so batches cross process and device
boundaries at a quarter of the float32 size.

- Training (MLPerf ResNet reference): a distorted bounding box as TF samples it (5%-100% of the
  area, aspect ratio 0.75-1.33, covering at least 10% of an annotated object, or of the whole image
  when the image has no boxes; 100 attempts, then the whole image), resized to `size` x `size`
  bilinearly, then a horizontal flip with probability 1/2.
- Evaluation: resize the shorter side to `resize_size` (bilinear), centre crop `crop_size`.
"""

import math

import numpy as np
from PIL import Image

# RGB means the reference subtracts, with no division by a std (image_classification/tensorflow2/
# imagenet_preprocessing.py, CHANNEL_MEANS and _mean_image_subtraction).
CHANNEL_MEANS = np.array([123.68, 116.78, 103.94], np.float32)


class ImageDecodeError(OSError):
    """A JPEG that is missing, truncated or not an image."""


def decode_image(path):
    """Open and fully decode `path` as RGB; any failure is an ImageDecodeError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise ImageDecodeError(f"image file missing: {path}") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode image {path}: {error}") from error


def sample_distorted_box(width, height, boxes, rng, min_object_covered=0.1,
                         aspect_ratio_range=(0.75, 1.33), area_range=(0.05, 1.0), max_attempts=100):
    """A crop (left, top, right, bottom) drawn as `tf.image.sample_distorted_bounding_box` draws it with the
    reference's arguments (image_classification/tensorflow2/imagenet_preprocessing.py, _decode_crop_and_flip),
    following TF's kernel (core/kernels/image/sample_distorted_bounding_box_op.cc) step by step, in double
    precision and with `rng` (a numpy Generator: `random()`, `integers(0, n)`) for TF's Philox stream.

    `boxes`: the annotated objects, (xmin, ymin, xmax, ymax) relative to the image; none means the whole image.
    Each attempt draws an aspect ratio uniformly from the range and a crop of it (`_random_crop`); the first
    crop that covers at least `min_object_covered` of one object's area is returned; after `max_attempts`
    failures, the whole image."""
    objects = [(int(x0 * width), int(y0 * height), int(x1 * width), int(y1 * height))
               for x0, y0, x1, y1 in boxes] or [(0, 0, width, height)]
    low, high = aspect_ratio_range
    for _ in range(max_attempts):
        aspect = rng.random() * (high - low) + low
        crop = _random_crop(width, height, area_range, aspect, rng)
        if crop is not None and _covers(crop, objects, min_object_covered):
            return crop
    return 0, 0, width, height


def _random_crop(width, height, area_range, aspect, rng):
    """TF's GenerateRandomCrop: a height drawn uniformly from the integers between the least and the most that
    the area range and the image allow, width = round(height * aspect) (half to even, as lrintf), one row more
    or less if rounding left the area range, then an offset drawn from [0, size - crop) on each axis (the
    kernel's own bound: a crop shorter than the image never touches its last row). None if nothing fits."""
    min_area, max_area = area_range[0] * width * height, area_range[1] * width * height
    h = round(math.sqrt(min_area / aspect))
    max_h = round(math.sqrt(max_area / aspect))
    if round(max_h * aspect) > width:
        max_h = int((width + 0.5 - 1e-7) / aspect)   # the tallest crop whose rounded width fits
        if round(max_h * aspect) > width:
            max_h -= 1
    max_h = min(max_h, height)
    h = min(h, max_h)
    if h < max_h:
        h += int(rng.integers(0, max_h - h + 1))
    w = round(h * aspect)
    if w * h < min_area:
        h += 1
        w = round(h * aspect)
    if w * h > max_area:
        h -= 1
        w = round(h * aspect)
    if not (min_area <= w * h <= max_area and 0 < w <= width and 0 < h <= height):
        return None
    top = int(rng.integers(0, height - h)) if h < height else 0
    left = int(rng.integers(0, width - w)) if w < width else 0
    return left, top, left + w, top + h


def _covers(crop, objects, min_object_covered):
    """TF's SatisfiesOverlapConstraints: a crop of at least one pixel that covers `min_object_covered` of the
    area of some object of at least one pixel."""
    def area(r):
        return (r[2] - r[0]) * (r[3] - r[1])

    if area(crop) < 1:
        return False
    for obj in objects:
        if area(obj) < 1:
            continue
        x0, y0 = max(crop[0], obj[0]), max(crop[1], obj[1])
        x1, y1 = min(crop[2], obj[2]), min(crop[3], obj[3])
        overlap = area((x0, y0, x1, y1)) if x0 <= x1 and y0 <= y1 else 0
        if overlap / area(obj) >= min_object_covered:
            return True
    return False


def train_transform(image, rng, size, boxes=()):
    """The reference's training crop (`sample_distorted_box` against the annotated `boxes`), resized to
    `size` x `size`, then a horizontal flip with probability 1/2; uint8 HWC."""
    box = sample_distorted_box(image.width, image.height, boxes, rng)
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, np.uint8)


def eval_transform(image, resize_size, crop_size):
    """Shorter side to `resize_size` (skipped when it already is), centre crop; uint8 HWC."""
    shorter = min(image.width, image.height)
    if shorter != resize_size:
        factor = resize_size / shorter
        new_size = (max(resize_size, round(image.width * factor)),
                    max(resize_size, round(image.height * factor)))
        image = image.resize(new_size, Image.Resampling.BILINEAR)
    left = (image.width - crop_size) // 2
    top = (image.height - crop_size) // 2
    return np.asarray(image.crop((left, top, left + crop_size, top + crop_size)), np.uint8)


def normalize(images):
    """uint8 NHWC batch -> float32 NCHW with the reference's channel means subtracted."""
    return (images.astype(np.float32) - CHANNEL_MEANS).transpose(0, 3, 1, 2)
