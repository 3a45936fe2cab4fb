"""A method's config of the wrong type, or a config plus loose options, is a MethodError that
names the problem (not an AttributeError from inside a policy)."""

from __future__ import annotations

import numpy as np
import pytest

import knapspec_jax as ks
from knapspec_jax import api


def test_wrong_config_type_and_mixed_options(tiny_models):
  model = tiny_models["llama"].jax
  ids = np.arange(1, 9)
  with pytest.raises(ks.MethodError, match="takes config=FixedConfig.*got a KnapSpecConfig"):
    api.generate(model, ids, 4, method="fixed", config=ks.KnapSpecConfig())
  with pytest.raises(ks.MethodError, match="either config= or options"):
    api.generate(model, ids, 4, method="fixed", config=ks.FixedConfig(), gamma=3)
  with pytest.raises(ks.MethodError, match="skip must be a SkipMask"):
    ks.FixedConfig(skip=[1, 2, 3])
  with pytest.raises(ks.MethodError, match=r"background_compile must be .*'thread', 'process'.*"
                                           r"got 'procss'"):
    ks.KnapSpecConfig(background_compile="procss")
  for mode in (None, False, True, "thread", "process"):
    assert ks.KnapSpecConfig(background_compile=mode).background_compile == mode


def test_del_rule_uses_the_raw_exit_agreement():
  """DEL's Tokens-per-Layer on the agreement it measured: one token in 16 at exit 2 of 28 layers
  ((1 + 1/16) / (2 + 28) < 1/28) no longer beats AR (smoothed, it scored 1.04x and DEL drafted
  from layer 2 on Qwen2.5-1.5B); 0.9 at exit 14 does, with the d that maximizes
  (1 - 0.9^(d+1)) / 0.1 / (14 d + 28), computed here."""
  from knapspec_jax.methods import del_choice
  agree = np.zeros(28)
  agree[1], agree[-1] = 1 / 16, 1.0
  assert del_choice(agree, min_exit=2, gamma_max=10)[1] is None
  agree[13] = 0.9
  tpl, exit_layer, d, alpha = del_choice(agree, min_exit=2, gamma_max=10)
  scores = [(1 - 0.9 ** (k + 1)) / 0.1 / (14 * k + 28) for k in range(1, 11)]
  assert (exit_layer, alpha) == (14, 0.9) and d == 1 + int(np.argmax(scores))
  assert tpl == pytest.approx(max(scores)) and tpl > 1 / 28
