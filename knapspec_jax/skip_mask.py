"""Which of the 2L sublayers a draft skips: a frozen, hashable value used as a jit static argument.

Item order follows the paper: item 2i is the attention sublayer of layer i, item 2i+1 its MLP
(0-based). A skipped sublayer is the identity on the residual stream.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence


class SkipMaskError(ValueError):
  """A skip mask that does not fit the model, or breaks a rule of the method."""


@dataclasses.dataclass(frozen=True)
class SkipMask:
  """skip[2i] drops layer i's attention, skip[2i + 1] its MLP."""

  skip: tuple[bool, ...]

  def __post_init__(self):
    if not isinstance(self.skip, tuple):
      raise SkipMaskError(f"SkipMask.skip must be a tuple of bools, got {type(self.skip).__name__}")
    if len(self.skip) % 2:
      raise SkipMaskError(f"a skip mask has 2 items per layer; got an odd length {len(self.skip)}")
    object.__setattr__(self, "skip", tuple(bool(s) for s in self.skip))

  @classmethod
  def none(cls, n_layers: int) -> "SkipMask":
    return cls((False,) * (2 * n_layers))

  @classmethod
  def from_layers(cls, n_layers: int, attn: Iterable[int] = (),
                  mlp: Iterable[int] = ()) -> "SkipMask":
    """Skips the attention of layers `attn` and the MLP of layers `mlp` (0-based)."""
    skip = [False] * (2 * n_layers)
    for kind, layers in ((0, attn), (1, mlp)):
      for i in layers:
        if not 0 <= i < n_layers:
          raise SkipMaskError(f"layer index {i} is outside 0..{n_layers - 1}")
        skip[2 * i + kind] = True
    return cls(tuple(skip))

  @classmethod
  def early_exit(cls, n_layers: int, exit_layer: int) -> "SkipMask":
    """Runs layers 0..exit_layer-1 and skips everything above (DEL-style early exit)."""
    if not 1 <= exit_layer <= n_layers:
      raise SkipMaskError(f"exit layer {exit_layer} is outside 1..{n_layers}")
    return cls.from_layers(n_layers, range(exit_layer, n_layers), range(exit_layer, n_layers))

  @property
  def n_layers(self) -> int:
    return len(self.skip) // 2

  @property
  def attn_skipped(self) -> tuple[int, ...]:
    return tuple(i for i in range(self.n_layers) if self.skip[2 * i])

  @property
  def mlp_skipped(self) -> tuple[int, ...]:
    return tuple(i for i in range(self.n_layers) if self.skip[2 * i + 1])

  @property
  def n_skipped(self) -> int:
    return sum(self.skip)

  def skips_attn(self, layer: int) -> bool:
    return self.skip[2 * layer]

  def skips_mlp(self, layer: int) -> bool:
    return self.skip[2 * layer + 1]

  def check(self, n_layers: int, protect_ends: bool = False) -> "SkipMask":
    """Raises SkipMaskError unless the mask fits a model of `n_layers` layers.

    With protect_ends, the first and last layers must be kept (the official KnapSpec rule).
    """
    if len(self.skip) != 2 * n_layers:
      raise SkipMaskError(
          f"skip mask has {len(self.skip)} items but the model has {n_layers} layers "
          f"({2 * n_layers} sublayers)")
    if protect_ends and any(self.skip[:2] + self.skip[-2:]):
      raise SkipMaskError("the first and last layers may not be skipped")
    return self

  def to_list(self) -> list[int]:
    return [int(s) for s in self.skip]

  @classmethod
  def from_list(cls, bits: Sequence[int | bool]) -> "SkipMask":
    return cls(tuple(bool(b) for b in bits))

  def __str__(self) -> str:
    attn = "".join("." if s else "A" for s in self.skip[0::2])
    mlp = "".join("." if s else "M" for s in self.skip[1::2])
    return f"attn[{attn}] mlp[{mlp}]"
