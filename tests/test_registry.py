"""The registry: names, dotted paths, and the errors a user sees."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models


def test_expected_families_are_registered():
  expected = {"rnn", "lstm", "gru", "transformer", "transformer_seq2seq", "transformer_lm",
              "wavenet", "bytenet", "convs2s"}
  assert expected <= set(models.names())


def test_unknown_name_lists_known_ones():
  with pytest.raises(ValueError) as e:
    models.create("lstmm", in_features=2, hidden_features=3, rngs=nnx.Rngs(0))
  msg = str(e.value)
  assert "'lstmm'" in msg and "lstm" in msg and "transformer" in msg


def test_unknown_keyword_lists_allowed_ones():
  with pytest.raises(ValueError) as e:
    models.create("lstm", in_features=2, hidden_size=3, rngs=nnx.Rngs(0))
  assert "hidden_size" in str(e.value) and "hidden_features" in str(e.value)


def test_dotted_path_builds_a_fork_model_without_registration():
  m = models.create("forks.example.cummean:CumulativeMean", in_features=2,
                    hidden_features=3, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 2)), jnp.float32)
  y = m(x)
  # Independent reference: the running mean by a Python loop, then the linear map.
  ref = np.stack([x[:, : t + 1].mean(axis=1) for t in range(5)], axis=1)
  ref = ref @ np.asarray(m.proj.kernel[...]) + np.asarray(m.proj.bias[...])
  np.testing.assert_allclose(y, ref, atol=1e-5)
  assert "cummean" in models.names()  # importing the fork module registered it too


@pytest.mark.parametrize("path,needle", [
    ("no_such_pkg.mod:Thing", "cannot import"),
    ("forks.example.cummean:Missing", "no attribute"),
])
def test_bad_dotted_paths_say_what_is_wrong(path, needle):
  with pytest.raises(ValueError, match=needle):
    models.create(path, rngs=nnx.Rngs(0))


def test_registering_a_taken_name_to_another_class_fails():
  with pytest.raises(ValueError, match="already registered"):
    models.register("lstm")(type("Other", (), {}))


def test_the_generic_registry_serves_any_kind():
  from seqscale import registry  # pylint: disable=g-import-not-at-top
  widgets = registry.Registry("widget", implicit=("rngs",))

  @widgets.register("box")
  def box(size: int = 1, *, rngs=None):
    del rngs
    return ("box", size)

  assert widgets.names() == ["box"] and widgets.lookup("box") is box
  assert widgets.build("box", size=3) == ("box", 3)
  with pytest.raises(ValueError, match="unknown widget 'bx'; known widgets: box"):
    widgets.lookup("bx")
  with pytest.raises(ValueError) as e:
    widgets.build("box", width=2)
  assert str(e.value) == "widget 'box' does not take 'width'; it takes: size"
  with pytest.raises(ValueError, match="already registered"):
    widgets.register("box")(lambda: None)
  assert widgets.lookup("forks.example.cummean:CumulativeMean").__name__ == "CumulativeMean"
