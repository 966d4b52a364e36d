"""What each benchmark family trains on and how it is scored.

A task owns the data loaders and the model, and knows how to compute the training loss of a batch
and the evaluation metric: validation log perplexity (mean cross entropy per token, lower is better)
for language models, top-1 accuracy (higher is better) for image classifiers.
"""
from __future__ import annotations
import itertools, os
import numpy as np
from .core import Tensor, dtypes
from .build import build_replica
from .parallel.sharded import Sharded


IGNORE = -100   # a target that is not scored


class LMTask:
  metric = "log perplexity"

  def __init__(self, cfg, device, dp_rank=0, dp_size=1):
    """device: one device, or the tensor-parallel group (a list) the model is sharded over."""
    from .data.tokens import TokenDataset, TokenLoader
    self.cfg, self.device = cfg, device
    d = cfg.data
    train_prefixes, val_prefix = self._prefixes(cfg)
    self.train_set = TokenDataset(train_prefixes, d.seq_len)
    self.val_set = TokenDataset(val_prefix, d.seq_len, num_samples=cfg.eval.samples)
    self.loader = TokenLoader(self.train_set, cfg.train.global_batch_size, dp_rank, dp_size, shuffle=True, seed=cfg.train.seed)
    self.model = build_replica(cfg, device if isinstance(device, list) else [device])
    self.tokens_per_sample = d.seq_len

  @staticmethod
  def _prefixes(cfg):
    from .data import tiny_corpus
    d = cfg.data
    if d.kind == "c4":
      for p in (*d.train_prefixes, d.validation_prefix):
        for ext in (".bin", ".idx"):
          if not os.path.exists(os.path.join(d.path, p + ext)):
            raise FileNotFoundError(f"C4 data file missing: {os.path.join(d.path, p + ext)} (set data.path to the folder of the Megatron .bin/.idx files)")
      return [os.path.join(d.path, p) for p in d.train_prefixes], os.path.join(d.path, d.validation_prefix)
    if d.kind == "bytes":
      tr, va = tiny_corpus.build_byte_corpus(d.cache_dir)
      return [tr], va
    folder = os.path.join(tiny_corpus.default_cache_dir(), f"markov_v{cfg.model.vocab_size}_s{d.seq_len}")
    tr, va = tiny_corpus.build_markov_c4(folder, vocab=cfg.model.vocab_size, seq_len=d.seq_len, validation_samples=cfg.eval.samples)
    return [tr], va

  def next_batch(self):
    """The next global batch as host arrays (inputs, targets)."""
    toks = next(self.loader)
    return toks[:, :-1].astype(np.int32), toks[:, 1:].astype(np.int32)

  @staticmethod
  def _place(arr, device):
    """Host tokens on a device, or replicated over a tensor-parallel group."""
    if isinstance(device, list): return Sharded.replicate(Tensor(arr, device=device[0]), device)
    return Tensor(arr, device=device)

  def to_device(self, x, y, device):
    return self._place(x, device), self._place(y, device)

  def loss(self, model, x, y) -> Tensor:
    return model.loss(x, y)

  def eval_loss(self, model, x, y) -> Tensor:
    """The metric's numerator on one batch: summed cross entropy (targets IGNORE are not counted)."""
    return model.loss(x, y, ignore_index=IGNORE, reduction="sum")

  def eval_batches(self, batch: int):
    """(inputs, targets, tokens scored) for every `batch` validation sequences in order; the last batch is
    filled up with sequences whose targets are all IGNORE, so every batch has one shape."""
    n = len(self.val_set)
    for start in range(0, n, batch):
      toks = self.val_set.batch(np.arange(start, min(start + batch, n)))
      x, y = toks[:, :-1].astype(np.int32), toks[:, 1:].astype(np.int32)
      scored = y.size
      if len(toks) < batch:
        x = np.concatenate([x, np.zeros((batch - len(toks), x.shape[1]), np.int32)])
        y = np.concatenate([y, np.full((batch - len(toks), y.shape[1]), IGNORE, np.int32)])
      yield x, y, scored

  def state_dict(self): return {"loader": self.loader.state_dict()}
  def load_state_dict(self, s): self.loader.load_state_dict(s["loader"])


class ImageTask:
  metric = "top-1 accuracy"

  def __init__(self, cfg, device: str, dp_rank=0, dp_size=1):
    from .data.imagenet import ImageFolder, ArrayImages, ImageLoader
    from .data.image_transforms import CHANNEL_MEANS
    from .data.synthetic_images import synthetic_arrays
    self.cfg, self.device = cfg, device
    d = cfg.data
    if d.kind == "imagenet":
      train, val = ImageFolder(d.path, "train"), ImageFolder(d.path, "val")
      size = dict(image_size=d.image_size, resize_size=int(d.image_size * 256 / 224))
    else:
      ims, labels = synthetic_arrays(num_classes=cfg.model.num_classes, per_class=d.train_samples // cfg.model.num_classes, size=d.image_size, seed=cfg.train.seed)
      vims, vlabels = synthetic_arrays(num_classes=cfg.model.num_classes, per_class=max(1, cfg.eval.samples // cfg.model.num_classes), size=d.image_size, seed=cfg.train.seed + 1)
      train, val = ArrayImages(ims, labels), ArrayImages(vims, vlabels)
      size = dict(image_size=d.image_size, resize_size=d.image_size)
    size["workers"] = d.workers
    self.loader = ImageLoader(train, cfg.train.global_batch_size, train=True, dp_rank=dp_rank, dp_size=dp_size, seed=cfg.train.seed, **size)
    self.val = val
    self.val_size = size
    self.model = build_replica(cfg, [device])
    self.tokens_per_sample = 1
    self.mean = Tensor(CHANNEL_MEANS.reshape(1, 3, 1, 1), device=device)

  def _images(self, u8, device):
    """uint8 NHWC -> float32 NCHW less the reference's channel means (no division by a std)."""
    x = Tensor(np.ascontiguousarray(u8.transpose(0, 3, 1, 2)), device=device, dtype=dtypes.float32)
    return x - self.mean.to(device)

  def next_batch(self):
    """The next global batch as host arrays (uint8 NHWC images, int32 labels)."""
    ims, labels = next(self.loader)
    return ims, labels.astype(np.int32)

  def to_device(self, x, y, device):
    return self._images(x, device), Tensor(y, device=device)

  def loss(self, model, x, y) -> Tensor:
    return model(x).cross_entropy(y, label_smoothing=self.cfg.optimizer.label_smoothing)

  def eval_loss(self, model, x, y) -> Tensor:
    """The metric's numerator on one batch: correct top-1 predictions (padding labels are -1, never correct)."""
    return (model(x).argmax(-1) == y).sum()

  def eval_batches(self, batch: int):
    """(images, labels, images scored) for the validation set in batches of `batch` (the last one padded)."""
    from .data.imagenet import ImageLoader
    with ImageLoader(self.val, batch, train=False, seed=0, **self.val_size) as loader:
      for ims, labels in itertools.islice(loader, loader.batches_per_epoch):
        yield ims, labels.astype(np.int32), int((labels >= 0).sum())

  def state_dict(self): return {"loader": self.loader.state_dict()}
  def load_state_dict(self, s): self.loader.load_state_dict(s["loader"])


def make_task(cfg, device, dp_rank=0, dp_size=1):
  return (LMTask if cfg.family == "llama" else ImageTask)(cfg, device, dp_rank, dp_size)
