"""Tasks: synthetic generators as TFDS builders (array_record, no TensorFlow), real TFDS
datasets where prepared, read through grain. See docs/CONTRACT.md, "Task interface".

  task = get_task("running_sum", length=64, data_dir="/tmp/tfds")
  batch = task.dataset("train", batch_size=32, seed=0)[step]   # batch `step`, exactly

Registered tasks: ``task_names()``; a fork adds one with ``@register_task("name")`` or by
passing ``"package.module:Class"`` to ``get_task``.
"""

from seqscale.data.task import Task, get_task, register_task, task_names

# Importing the task modules registers their tasks.
from seqscale.data import adding_problem  # noqa: F401  pylint: disable=g-bad-import-order
from seqscale.data import algorithmic  # noqa: F401
from seqscale.data import associative_recall  # noqa: F401
from seqscale.data import babi_like  # noqa: F401
from seqscale.data import binary_arith  # noqa: F401
from seqscale.data import copy_memory  # noqa: F401
from seqscale.data import listops  # noqa: F401
from seqscale.data import real  # noqa: F401
from seqscale.data import running_sum  # noqa: F401
from seqscale.data import text  # noqa: F401

__all__ = ["Task", "get_task", "register_task", "task_names"]
