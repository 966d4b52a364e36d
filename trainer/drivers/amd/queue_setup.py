"""CREATE_QUEUE as the AQL and SDMA queues both make it: the ioctl, and KFD's refusal in words. KFD
gives the reason for an EINVAL (which buffer, which size it expected) only as a pr_debug line of
kfd_queue.c, so the error says how to turn those lines on."""
from __future__ import annotations
from . import kfd

DYNAMIC_DEBUG = "echo 'file kfd_queue.c +p' > /sys/kernel/debug/dynamic_debug/control"


def create_queue(dev, args, what: str):
  """CREATE_QUEUE with `args` (filled in place); an AmdError naming the queue when KFD refuses it."""
  try: dev.os.ioctl(dev.kfd_fd, kfd.CREATE_QUEUE, args)
  except OSError as e:
    raise kfd.AmdError(f"CREATE_QUEUE of the {what} of gpu_id {args.gpu_id} failed: {e.strerror} (KFD logs its reason as a "
                       f"debug line: as root, {DYNAMIC_DEBUG}; then dmesg)") from None


def destroy_queue(dev, queue_id: int, bos: list):
  """DESTROY_QUEUE, then the queue's buffers freed."""
  dev.os.ioctl(dev.kfd_fd, kfd.DESTROY_QUEUE, kfd.destroy_queue_args(queue_id=queue_id))
  for bo in reversed(bos): dev.memory.free(bo)
