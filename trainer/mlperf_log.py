"""MLPerf result logs for one run, written through the official `mlperf_logging.mllog` package.

`position` below is the number of training samples consumed for llama benchmarks and the number
of epochs completed for resnet ones. The training loop calls, in this order:

    log = MLPerfLogger(cfg, "result.log", echo=True)
    log.init_start(cache_cleared)   # cache_clear, init_start
    log.hyperparameters()           # submission_*, seed, batch sizes, 6.1.0 disclosures, optimizer
    ...                             # build the model, load data, compile (at most 30 minutes)
    log.init_stop()
    log.run_start()
    log.precision(linear, attn, comm)   # after the first step: the dtypes that step ran in (6.1.0)
    loop:
        log.block_start(position)   # training until the next evaluation
        log.block_stop(position)
        log.eval_start(position)
        log.eval_stop(position, value)   # eval_accuracy, then eval_stop
        stop when cfg.target_reached(value) or the train cap is hit
    log.run_stop(success, train_samples)  # run_stop(status), train_samples (samples consumed)
    log.close()

Logs of llama benchmarks are checked with ruleset 6.1.0, resnet ones with 4.0.0 (resnet's last):
`python -m mlperf_logging.compliance_checker --usage training --ruleset RULESET LOG`.
The tiny benchmarks log under the name of the MLPerf benchmark they shrink.
"""

import logging
import os
import sys

from mlperf_logging.mllog.mllog import MLLogger
from mlperf_logging.mllog import constants as C

_PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bfloat16", "float16": "fp16"}


def ruleset(cfg):
    """The compliance-checker ruleset a benchmark's logs are checked against."""
    return "6.1.0" if cfg.family == "llama" else "4.0.0"


class MLPerfLogger:
    """Writes one run's MLPerf events for a validated Config to a file (and stdout if echo); path None writes nothing."""

    def __init__(self, cfg, path, echo=False):
        self.cfg = cfg
        self.path = path
        self._logger = logging.getLogger(f"{__name__}.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handlers = [logging.FileHandler(path, mode="a")] if path is not None else []   # None: hosts other than 0 log nothing
        if echo:
            self._handlers.append(logging.StreamHandler(sys.stdout))
        for handler in self._handlers:
            self._logger.addHandler(handler)
        # Stack offset 2: each log line names the line of this file that logged its key.
        self._mllog = MLLogger(logger=self._logger, default_stack_offset=2)
        self._block_first_epoch = None

    def _log(self, kind, key, value=None, metadata=None):
        """kind: 'start', 'end' or 'event' (an interval's start, its end, or a point in time)."""
        getattr(self._mllog, kind)(key=key, value=value, metadata=metadata)

    def init_start(self, cache_cleared=True):
        """Record whether the page cache was cleared, then the start of initialisation."""
        self._log("event", C.CACHE_CLEAR, cache_cleared)
        self._log("start", C.INIT_START)

    def hyperparameters(self):
        """Submission facts, batch sizes, precision/parallelism disclosures, optimizer, schedule."""
        cfg, train = self.cfg, self.cfg.train
        for key, value in self._submission().items():
            self._log("event", key, value)
        self._log("event", C.SEED, train.seed)
        self._log("event", C.GLOBAL_BATCH_SIZE, train.global_batch_size)
        self._log("event", C.MICRO_BATCH_SIZE, train.micro_batch_size)
        self._log("event", C.GRADIENT_ACCUMULATION_STEPS, train.gradient_accumulation_steps)
        self._log("event", C.EVAL_SAMPLES, cfg.eval.samples)
        for key, value in self._disclosures().items():
            self._log("event", key, value)
        if cfg.family == "llama":
            self._log("event", C.MAX_SEQUENCE_LENGTH, cfg.data.seq_len)
        else:   # samples per batch-norm statistic, logged whatever the optimizer (resnet_ctl_imagenet_main.py)
            self._log("event", C.MODEL_BN_SPAN, cfg.model.bn_span or train.micro_batch_size)
        for key, value in self._optimizer().items():
            self._log("event", key, value)

    def precision(self, linear, attn, comm):
        """The lowest precisions the step ran in (names of core dtypes, as core.precision noted them)."""
        self._log("event", C.LOWEST_NUMERICAL_PRECISION_IN_LINEAR, _PRECISION_NAMES[linear])
        self._log("event", C.LOWEST_NUMERICAL_PRECISION_IN_ATTN, _PRECISION_NAMES[attn])
        self._log("event", C.LOWEST_NUMERICAL_PRECISION_IN_COMM, _PRECISION_NAMES[comm])

    def init_stop(self):
        self._log("end", C.INIT_STOP)

    def run_start(self):
        self._log("start", C.RUN_START)

    def block_start(self, position):
        """Start a stretch of training that ends at the next evaluation."""
        if self.cfg.family == "llama":
            self._log("start", C.BLOCK_START, metadata={C.SAMPLES_COUNT: position})
            return
        self._block_first_epoch = position + 1
        count = self._next_eval_epoch(position) - position
        self._log("start", C.BLOCK_START, metadata={C.FIRST_EPOCH_NUM: position + 1, C.EPOCH_COUNT: count})

    def block_stop(self, position):
        if self.cfg.family == "llama":
            self._log("end", C.BLOCK_STOP, metadata={C.SAMPLES_COUNT: position})
            return
        first = self._block_first_epoch
        self._log("end", C.BLOCK_STOP, metadata={C.FIRST_EPOCH_NUM: first, C.EPOCH_COUNT: position - first + 1})

    def eval_start(self, position):
        self._log("start", C.EVAL_START, metadata=self._at(position))

    def eval_stop(self, position, value):
        """Record the evaluation result (log perplexity or top-1) and the end of the evaluation."""
        self._log("event", C.EVAL_ACCURACY, float(value), metadata=self._at(position))
        self._log("end", C.EVAL_STOP, metadata=self._at(position))

    def run_stop(self, success, train_samples):
        """End the run: status success if the target was reached, else aborted."""
        self._log("end", C.RUN_STOP, metadata={C.STATUS: C.SUCCESS if success else C.ABORTED})
        self._log("event", C.TRAIN_SAMPLES, train_samples)

    def close(self):
        for handler in self._handlers:
            self._logger.removeHandler(handler)
            handler.close()

    def _at(self, position):
        key = C.SAMPLES_COUNT if self.cfg.family == "llama" else C.EPOCH_NUM
        return {key: position}

    def _next_eval_epoch(self, done):
        interval = self.cfg.eval.interval_epochs
        first = self.cfg.eval.offset_epochs or interval
        if done < first:
            return first
        return first + interval * ((done - first) // interval + 1)

    def _submission(self):
        m = self.cfg.mlperf
        return {
            C.SUBMISSION_ORG: m.submission_org,
            C.SUBMISSION_PLATFORM: m.submission_platform,
            C.SUBMISSION_DIVISION: m.division,
            C.SUBMISSION_BENCHMARK: self.cfg.mlperf_benchmark,
            C.SUBMISSION_STATUS: m.status,
        }

    def _disclosures(self):
        return {
            C.TENSOR_PARALLELISM: self.cfg.mesh.tp,
            C.PIPELINE_PARALLELISM: 1,
            C.CONTEXT_PARALLELISM: 1,
            C.EXPERT_PARALLELISM: 1,
            C.CONFIG_FILENAME: os.path.basename(self.cfg.recipe) or self.cfg.benchmark,
        }

    def _optimizer(self):
        """Optimizer and schedule keys, named as the rules for each optimizer expect."""
        opt, sched = self.cfg.optimizer, self.cfg.schedule
        p = "opt" if opt.name == "adamw" else f"{opt.name}_opt"
        keys = {C.OPT_NAME: opt.name, f"{p}_base_learning_rate": opt.lr}
        if opt.name == "adamw":
            keys.update({C.OPT_ADAMW_BETA_1: opt.betas[0], C.OPT_ADAMW_BETA_2: opt.betas[1],
                         C.OPT_ADAMW_EPSILON: opt.eps, C.OPT_ADAMW_WEIGHT_DECAY: opt.weight_decay})
        else:
            keys.update({f"{p}_momentum": opt.momentum, f"{p}_weight_decay": opt.weight_decay})
        if opt.name == "lars":
            keys[C.LARS_EPSILON] = opt.eps
        if opt.grad_clip_norm is not None:
            keys[C.OPT_GRADIENT_CLIP_NORM] = opt.grad_clip_norm
        keys[f"{p}_end_learning_rate"] = sched.end_lr
        if sched.kind == "cosine_warmup":
            keys.update({C.OPT_LR_DECAY_SCHEDULE: "cosine with linear warmup",
                         C.MAX_STEPS: sched.max_steps,
                         f"{p}_learning_rate_warmup_steps": sched.warmup_steps,
                         f"{p}_learning_rate_decay_steps": sched.decay_steps})
        else:
            warmup_key = C.OPT_LR_WARMUP_EPOCHS if opt.name == "sgd" else f"{p}_learning_rate_warmup_epochs"
            keys.update({C.OPT_LR_DECAY_SCHEDULE: "polynomial with linear warmup",
                         f"{p}_learning_rate_decay_poly_power": sched.power,
                         f"{p}_learning_rate_decay_steps": sched.decay_steps,
                         warmup_key: sched.warmup_epochs})
        return keys

