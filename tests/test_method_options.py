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
