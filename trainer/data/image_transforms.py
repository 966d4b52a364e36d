"""Image decoding and the ResNet-50 ImageNet transforms, as pure functions on Pillow images.

Outputs are uint8 HWC RGB arrays; normalisation to float (`normalize`: the channel means
subtracted, as the reference does) is left to the consumer so batches cross process and device
boundaries at a quarter of the float32 size.

- Training (MLPerf ResNet reference): random-resized crop covering 8%-100% of the area with
  aspect ratio 3/4-4/3 (ten tries, then a centred crop), resized to `size` x `size` bilinearly,
  then a horizontal flip with probability 1/2.
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


def random_resized_crop_box(width, height, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """A crop box (left, top, right, bottom) drawn as by the MLPerf ResNet reference."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def train_transform(image, rng, size):
    """Random-resized crop to `size` x `size` and random horizontal flip; uint8 HWC."""
    box = random_resized_crop_box(image.width, image.height, rng)
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
