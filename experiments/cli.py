"""What every entry point shares: flags in, one ``error:`` line out.

Each ``experiments/<name>.py`` defines its flags, a ``settings()`` that builds the study's
settings from them and a ``main(settings, workdir)`` that calls the study, then hands both
to ``run``:

  - ``--help``/``--helpshort`` (this module's flags) and ``--helpfull`` (all flags) print
    and exit 0;
  - a usage error (an unknown flag, a bad value, a ValueError from ``settings()``, a missing
    ``--workdir`` or one that is a file or cannot be written) prints one line
    ``error: ...`` on stderr and exits 2, before any work;
  - a failure while the work runs (ValueError, RuntimeError, FloatingPointError, OSError)
    prints one line and exits 1.
"""

from __future__ import annotations

import ast
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import app
from absl import flags

from seqscale import outputs

FLAGS = flags.FLAGS
flags.disclaim_key_flags()  # flags defined through this module belong to its caller
USAGE = 2  # exit code of a usage error (bad flags); 1 for a failure at run time
RUNTIME_ERRORS = (ValueError, RuntimeError, FloatingPointError, OSError)
_HELP = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
_HELPFULL = ("--helpfull", "-helpfull")


def fail(message: Any, code: int = USAGE) -> NoReturn:
  """Prints ``error: <message>`` as one line on stderr and exits with ``code``."""
  text = " ".join(str(message).split())
  text = re.sub(r"invalid literal for int\(\) with base 10: .*", "must be an integer", text)
  text = re.sub(r"could not convert string to float: .*", "must be a number", text)
  name = re.match(r"([A-Za-z_]\w*)=", text)
  if name and name.group(1) in FLAGS:  # "max_n=0; ..." from a study names its flag
    text = "--" + text
  print("error: " + text, file=sys.stderr, flush=True)
  sys.exit(code)


class LiteralParser(flags.ArgumentParser):
  """A Python literal (``3``, ``0.1``, ``True``/``true``, ``None``/``none``, ``(3, 3)``),
  else the string itself (``bfloat16``, ``/tmp/data``)."""

  def parse(self, argument: Any) -> Any:
    if not isinstance(argument, str):
      return argument
    text = {"true": "True", "false": "False", "none": "None"}.get(argument, argument)
    try:
      return ast.literal_eval(text)
    except (SyntaxError, ValueError):
      return argument

  def flag_type(self) -> str:
    return "literal"


class _IntListParser(flags.ListParser):
  """Comma-separated integers, each >= ``lower_bound``; at least one."""

  def __init__(self, lower_bound: int):
    super().__init__()
    self.lower_bound = lower_bound

  def parse(self, argument: str | list[Any]) -> list[int]:
    allowed = f"must be comma-separated integers >= {self.lower_bound}, e.g. 64,128"
    items = super().parse(argument)
    try:
      values = [int(str(v).strip()) for v in items]
    except ValueError:
      raise ValueError(allowed) from None
    if not values or any(v < self.lower_bound for v in values):
      raise ValueError(allowed)
    return values

  def flag_type(self) -> str:
    return "list of ints"


def DEFINE_integer_list(name: str, default: list[int] | None, help: str,  # pylint: disable=invalid-name,redefined-builtin
                        lower_bound: int = 1) -> flags.FlagHolder:
  """A flag holding comma-separated integers >= ``lower_bound`` (a bad one is a usage
  error naming the flag)."""
  return flags.DEFINE(_IntListParser(lower_bound), name, default, help,
                      serializer=flags.CsvListSerializer(","))


def check_names(holder: flags.FlagHolder, allowed: Sequence[str]) -> None:
  """Registers a validator: every name in the list flag ``holder`` is one of ``allowed``."""
  allowed = list(allowed)
  flags.register_validator(holder.name, lambda names: all(n in allowed for n in names or ()),
                           message=f"allowed: {', '.join(allowed)} (comma-separated)")


def _parse(argv: list[str], before: Callable[[list[str]], None] | None,
           help_text: Callable[[list[str]], str] | None = None) -> list[str]:
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  if any(a in _HELP or a in _HELPFULL for a in args):
    app.usage(shorthelp=not any(a in _HELPFULL for a in args), writeto_stdout=True)
    if help_text is not None:
      print("\n" + help_text(argv))
    if not any(a in _HELPFULL for a in args):
      print("\nTry --helpfull to get a list of all flags.")
    sys.exit(0)
  if before is not None:
    before(argv)
  try:
    rest = FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    fail(f"--{e.flagname}: unknown flag; see --help for the flags")
  except flags.Error as e:
    fail(e)
  if len(rest) > 1:
    fail(f"unexpected arguments {rest[1:]}; flags take the form --name=value (see --help)")
  return rest


def run(main: Callable[[Any, str | None], Any], settings: Callable[[], Any], *,
        workdir: bool | Callable[[], bool] = True,
        before_parse: Callable[[list[str]], None] | None = None,
        help_text: Callable[[list[str]], str] | None = None) -> None:
  """Parses the flags, then ``main(settings(), workdir)`` (see the module docstring).

  Args:
    main: does the work; its ValueError, RuntimeError, FloatingPointError or OSError is
      one line and exit code 1.
    settings: builds the study's settings from the flags; its ValueError is a usage error.
    workdir: whether ``--workdir`` is needed (a callable: asked after parsing); it is
      checked (created, writable, not a file) before ``main`` and passed as an absolute
      path (None when not needed).
    before_parse: called with ``argv`` before the flags are parsed (``train`` loads its
      ``--config`` there); it may call ``fail``.
    help_text: called with ``argv`` on ``--help``/``--helpfull``; what it returns is printed
      after the flags (``train`` lists its config's fields there).
  """

  def _main(argv: list[str]) -> None:
    del argv
    try:
      built = settings()
    except ValueError as e:
      fail(e)
    path = None
    if workdir() if callable(workdir) else workdir:
      try:
        path = outputs.prepare_workdir(FLAGS["workdir"].value if "workdir" in FLAGS else None)
      except ValueError as e:
        fail(e)
    try:
      main(built, path)
    except RUNTIME_ERRORS as e:
      fail(e, 1)

  app.run(_main, flags_parser=lambda argv: _parse(argv, before_parse, help_text))
