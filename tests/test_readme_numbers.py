"""README.md quotes RESULTS.md and holds no measured number of its own.

A quote in README.md is marked in one of two ways, each naming the RESULTS.md section it
comes from (a GitHub heading anchor; the section runs to the next heading of its level):

- inline, a link whose text is the number: ``[0.9975](RESULTS.md#training-running_sum-lstm-quick)``;
- a block (a table, a paragraph) between ``<!-- quote: RESULTS.md#anchor -->`` and
  ``<!-- /quote -->``: every number in it must be in that section.

A quoted number matches when the section holds the same value, written the same way up to
thousands separators, trailing zeros and exponent format (``2,049`` = ``2049``,
``1.0`` = ``1.0000``, ``8.2e4`` = ``8.2e+04``; ``0.98`` is not ``0.9793``). Outside quotes,
README.md may hold no decimal number except the few in ``NOT_MEASURED``.
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Decimals in README.md that are not measurements (versions are skipped: x.y.z).
NOT_MEASURED = {"3.11"}  # Python 3.11+

_NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|(?<![\w.])\d+(?:\.\d+)?"
                     r"(?:e[+-]?\d+)?(?![\d])")
_INLINE = re.compile(r"\[([^\]]*)\]\(RESULTS\.md(#[^)]*)\)")
_BLOCK = re.compile(r"<!-- quote: RESULTS\.md(#\S+) -->\n(.*?)<!-- /quote -->", re.S)


def _read(name: str) -> str:
  with open(os.path.join(ROOT, name), encoding="utf-8") as f:
    return f.read()


def slug(heading: str) -> str:
  """GitHub's anchor for a heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections(markdown: str) -> dict[str, str]:
  """Anchor -> the text from its heading to the next heading of the same or a higher level."""
  lines = markdown.splitlines()
  heads = []
  in_code = False
  for i, line in enumerate(lines):
    in_code ^= line.startswith("```")
    m = None if in_code else re.match(r"(#{1,6}) (.*)", line)
    if m:
      heads.append((i, len(m.group(1)), m.group(2)))
  out, seen = {}, {}
  for k, (i, level, text) in enumerate(heads):
    end = next((j for j, lv, _ in heads[k + 1:] if lv <= level), len(lines))
    anchor = slug(text)
    n = seen.get(anchor, 0)
    seen[anchor] = n + 1
    out["#" + (anchor if n == 0 else f"{anchor}-{n}")] = "\n".join(lines[i:end])
  return out


def value(token: str) -> float:
  return float(token.replace(",", ""))


def numbers(text: str) -> list[str]:
  return _NUMBER.findall(text)


RESULTS = sections(_read("RESULTS.md"))
README = _read("README.md")


def quotes() -> list[tuple[str, str]]:
  """(anchor, quoted number) for every quote in README.md."""
  found = []
  blocks = list(_BLOCK.finditer(README))
  for m in blocks:
    body = _INLINE.sub("", m.group(2))
    body = re.sub(r"\]\([^)]*\)", "]", body)  # other links' targets are no quotes
    found += [(m.group(1), n) for n in numbers(body)]
  for m in _INLINE.finditer(README):
    found += [(m.group(2), n) for n in numbers(m.group(1))]
  return found


QUOTES = quotes()


def test_readme_quotes_results_md():
  # Enough quotes to carry the README's story; a rewrite that drops the markers fails here.
  assert len(QUOTES) > 100
  anchors = {a for a, _ in QUOTES}
  assert anchors <= set(RESULTS), f"README cites missing RESULTS.md sections: {anchors - set(RESULTS)}"


@pytest.mark.parametrize("anchor,number", sorted(set(QUOTES)))
def test_quoted_number_is_in_its_results_md_section(anchor, number):
  section = RESULTS.get(anchor)
  assert section is not None, f"RESULTS.md has no section {anchor}"
  held = {value(n) for n in numbers(section)}
  assert value(number) in held, (
      f"README.md quotes {number} from RESULTS.md{anchor}, which no longer holds it")


def test_readme_holds_no_measured_number_of_its_own():
  text = _BLOCK.sub("", README)
  text = _INLINE.sub("", text)
  text = re.sub(r"```.*?```", "", text, flags=re.S)  # commands
  text = re.sub(r"`[^`]*`", "", text)  # code, file and flag names
  text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
  text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
  text = re.sub(r"\d+\.\d+\.\d+\S*", "", text)  # versions
  own = sorted(set(re.findall(r"(?<![\w.])\d+\.\d+(?![\d.])", text)) - NOT_MEASURED)
  assert not own, (f"README.md holds numbers of its own: {own}; quote them from RESULTS.md "
                   "([number](RESULTS.md#section)) or drop them")


def test_bench_is_quoted_only_if_results_md_holds_it():
  bench = RESULTS["#performance-against-peers-pytorch-jaxnn-flax"]
  quoted = [n for a, n in QUOTES if a == "#performance-against-peers-pytorch-jaxnn-flax"]
  if "Not run" in bench:
    assert not quoted


def test_the_checker_tells_a_drifted_number():
  section = RESULTS["#training-running_sum-lstm-quick"]
  held = {value(n) for n in numbers(section)}
  assert value("0.9975") in held and value("0.999") not in held and value("0.996") not in held
  assert value("2,049") == value("2049") and value("8.2e4") == value("8.2e+04")
