"""The trainer: config, task head, jitted step, loop, orbax checkpoints, metrics.

    python -m experiments.train --config=experiments/configs/running_sum.py:quick \\
        --workdir=/tmp/rs_quick

- Resume: run the same command again; it continues from the latest readable checkpoint in
  ``workdir/checkpoints`` and ends with the parameters and logged metrics an uninterrupted
  run would have. A config that changes the run (seed, task, model, optimizer, batch size)
  is refused unless ``--config.resume=force``; SIGTERM/SIGINT save the step in flight.
- Watch: ``tensorboard --logdir=WORKDIR/tensorboard``, or ``tail -f WORKDIR/metrics.jsonl``.
- Several devices: ``--config.parallel.strategy=jit`` (default; a ``('data',)`` mesh) or
  ``pmap``; on a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` gives 4.
- Several hosts: the same command on every host with
  ``--config.parallel.coordinator_address=HOST0:PORT --config.parallel.num_processes=N
  --config.parallel.process_id=I`` (or ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``) and a ``--workdir`` all hosts share.

In Python: ``train.train_and_evaluate(config, workdir)`` returns what ``results.json`` holds.
"""

from seqscale.train.checkpoint import CheckpointError, load_arrays
from seqscale.train.config import default_config, validate
from seqscale.train.faults import Interrupted, RunError
from seqscale.train.trainer import NonFiniteLossError, get_task, restore_model, train_and_evaluate

__all__ = ["CheckpointError", "Interrupted", "NonFiniteLossError", "RunError",
           "default_config", "get_task", "load_arrays", "restore_model", "train_and_evaluate",
           "validate"]
