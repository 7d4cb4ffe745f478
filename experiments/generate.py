r"""Samples text from the newest checkpoint of a text run (``experiments.train`` on a text task).

  python -m experiments.train --config=experiments/configs/text_lm.py:quick \
      --workdir=/tmp/text_lm_quick
  python -m experiments.generate --workdir=/tmp/text_lm_quick --prompt='def ' --length=300 \
      [--temperature=0.8 --top_k=20 --seed=1]

Prints the prompt and its continuation. ``transformer_lm`` samples through its KV cache,
recurrent and convolutional models through their ``step``; the same ``--seed`` gives the
same text. Bad input (a flag value, a --workdir without a run or checkpoint, a prompt with
characters outside the vocabulary, a model that cannot step, a dataset that is not
prepared) ends with one ``error:`` line and exit code 2 (``experiments.cli``).
"""

from absl import flags

from experiments import cli
from seqscale.studies import text_lm

_WORKDIR = flags.DEFINE_string("workdir", None, "A text run's --workdir (its checkpoints/).")
_PROMPT = flags.DEFINE_string("prompt", "\n", "Text the sample continues.")
_LENGTH = flags.DEFINE_integer("length", 200, "Tokens to generate (bytes or characters).",
                               lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0: greedy.",
                                  lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).",
                              lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (the same seed, the same text).",
                             lower_bound=0)


def settings() -> text_lm.GenerateSettings:
  """The run to sample from, checked (a run's config.json and a checkpoint) before work."""
  return text_lm.generate_settings(
      _WORKDIR.value, prompt=_PROMPT.value, length=_LENGTH.value,
      temperature=_TEMPERATURE.value, top_k=_TOP_K.value, seed=_SEED.value)


def main(s: text_lm.GenerateSettings, workdir: None) -> None:
  del workdir  # read from the settings: it must already hold a run
  try:
    text = text_lm.generate(s)
  except (ValueError, FileNotFoundError) as e:  # prompt, model or dataset: bad input
    cli.fail(e)
  print(text, flush=True)


if __name__ == "__main__":
  cli.run(main, settings, workdir=False)
