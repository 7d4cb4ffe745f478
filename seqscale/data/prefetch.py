"""Batches made ahead of the training step: a background thread and a bounded queue.

  with Prefetch(lambda step: make_batch(step), range(start, num_steps), depth=2) as batches:
    for step in range(start, num_steps):
      batch = batches.next(step)

The thread calls ``make`` for each index in order and keeps at most ``depth`` results
waiting, so the host prepares batch ``i + 1`` (reads, formats, copies to the device) while
the device runs step ``i``. The results are exactly ``make(i)`` in order: a resumed run
that starts at ``start`` sees the batches an uninterrupted one saw. An exception in
``make`` is raised by ``next`` for that index; leaving the ``with`` stops the thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generic, Sequence, TypeVar

from seqscale.checks import check_int

T = TypeVar("T")
_POLL_S = 0.1  # how often a blocked producer checks whether it should stop


class Prefetch(Generic[T]):
  """``make(i)`` for each ``i`` in ``indices``, computed up to ``depth`` ahead in a thread.

  Args:
    make: index -> item (e.g. step -> device batch); called from the background thread.
    indices: the indices to make, in the order ``next`` will ask for them.
    depth: items made ahead (>= 1); 0 makes each item in ``next`` itself, no thread.
  """

  def __init__(self, make: Callable[[int], T], indices: Sequence[int], depth: int):
    self.make, self.indices = make, list(indices)
    check_int("depth", depth, minimum=0)
    self.depth = depth
    self._position = 0
    self._queue: queue.Queue[tuple[int, T | None, BaseException | None]] = queue.Queue(
        maxsize=max(self.depth, 1))
    self._stop = threading.Event()
    self._thread = None
    if self.depth and self.indices:
      self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
      self._thread.start()

  def _produce(self) -> None:
    for index in self.indices:
      try:
        item = (index, self.make(index), None)
      except BaseException as e:  # pylint: disable=broad-except  # raised again by next()
        item = (index, None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=_POLL_S)
          break
        except queue.Full:
          continue
      if self._stop.is_set() or item[2] is not None:
        return

  def next(self, index: int) -> T:
    """The item for ``index``, which must be the next one in ``indices``."""
    if self._position >= len(self.indices) or self.indices[self._position] != index:
      expected = (self.indices[self._position] if self._position < len(self.indices)
                  else "none (all were made)")
      raise ValueError(f"index={index} is out of order; the next one is {expected}")
    self._position += 1
    if self._thread is None:
      return self.make(index)
    got, item, error = self._queue.get()
    assert got == index, (got, index)
    if error is not None:
      raise error
    return item  # type: ignore[return-value]

  def close(self) -> None:
    """Stops the thread (it finishes the item it is making) and drops what it made."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None

  def __enter__(self) -> Prefetch[T]:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
