"""Figures for the experiments (matplotlib, Agg backend: files only, no display).

Each function draws one message, labels its axes with units, and saves a PNG. Titles carry the
machine and, for anything not measured on the real model, say so.
"""

from __future__ import annotations

import pathlib
import textwrap
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

DPI = 120


def _label(ax, xlabel: str, ylabel: str, title: str):
  """Axis labels and title, wrapped to the figure's width."""
  width = ax.figure.get_figwidth()
  ax.set_xlabel(xlabel)
  ax.set_ylabel("\n".join(textwrap.wrap(ylabel, 45)))
  ax.set_title("\n".join(textwrap.wrap(title, int(11 * width))), fontsize=9)


def _save(fig, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def speedup_bars(rows: Sequence[dict], path, title: str) -> pathlib.Path:
  """Decode speed of every method relative to AR, one group of bars per prompt."""
  methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "ar"]
  items = list(dict.fromkeys((r["item_id"], r["prompt_tokens"]) for r in rows))
  by = {(r["item_id"], r["method"]): r["speedup"] for r in rows}
  width = 0.8 / max(len(methods), 1)
  x = np.arange(len(items))
  fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(items) + 3), 4.0))
  for k, m in enumerate(methods):
    ax.bar(x + (k - (len(methods) - 1) / 2) * width,
           [by.get((item, m), np.nan) for item, _ in items], width, label=m)
  ax.axhline(1.0, color="black", lw=1, ls="--", label="AR")
  top = max([1.0] + [v for v in by.values() if np.isfinite(v)])
  ax.set_ylim(0, 1.3 * top)  # room for the legend above the bars
  ax.set_xticks(x, [f"{item.removeprefix('specbench-').removeprefix('longdoc-')}\n{n} tok"
                    for item, n in items], fontsize=7)
  _label(ax, "prompt (Spec-Bench id or long-document length; prompt tokens)",
         "decode speed / AR's (x)", title)
  ax.legend(fontsize=7, ncol=min(len(methods) + 1, 6))
  return _save(fig, path)


def speed_vs_context(rows: Sequence[dict], path, title: str) -> pathlib.Path:
  """Decode tokens/s against prompt length, one marker series per method."""
  fig, ax = plt.subplots(figsize=(6.0, 4.0))
  for m in dict.fromkeys(r["method"] for r in rows):
    pts = sorted((r["prompt_tokens"], r["tokens_per_s"]) for r in rows if r["method"] == m)
    ax.plot(*zip(*pts), marker="o", ls="", label=m, alpha=0.8)
  ax.set_xscale("log")
  _label(ax, "prompt length (tokens, log scale)", "decode speed (tokens/s)", title)
  ax.legend(fontsize=7)
  return _save(fig, path)


def scatter_fit(x, y, path, *, xlabel: str, ylabel: str, title: str, groups=None,
                annotate: str = "") -> pathlib.Path:
  """y against x, coloured by group, with an annotation (e.g. the Pearson r)."""
  fig, ax = plt.subplots(figsize=(5.5, 4.2))
  groups = groups if groups is not None else [""] * len(x)
  _grouped_scatter(ax, x, y, groups)
  _note(ax, annotate)
  _label(ax, xlabel, ylabel, title)
  if len(set(groups)) > 1:
    ax.legend(fontsize=7, loc="lower right")
  return _save(fig, path)


def _grouped_scatter(ax, x, y, groups):
  """y against x, one colour (and legend label) per group, in the groups' first-seen order."""
  x, y, groups = np.asarray(x, float), np.asarray(y, float), np.asarray(list(groups))
  for g in dict.fromkeys(groups.tolist()):
    sel = groups == g
    ax.scatter(x[sel], y[sel], s=18, alpha=0.75, label=str(g) or None)


def _note(ax, text: str):
  """A boxed note in the axes' top left corner (nothing for an empty text)."""
  if text:
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=8,
            bbox=dict(facecolor="white", alpha=0.8, lw=0))


def lines(series: dict, path, *, xlabel: str, ylabel: str, title: str, logx: bool = False,
          hline: float | None = None, hline_label: str = "", markers: bool = True,
          ylim=None) -> pathlib.Path:
  """One line per entry of series: label -> (x, y) or (x, y, matplotlib line options)."""
  fig, ax = plt.subplots(figsize=(6.0, 4.0))
  for label, (x, y, *style) in series.items():
    ax.plot(x, y, **({"marker": "o" if markers else None, "ms": 4} | (style[0] if style else {})),
            label=label)
  if hline is not None:
    ax.axhline(hline, color="black", lw=1, ls="--", label=hline_label or None)
  if logx:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  if ylim is not None:
    ax.set_ylim(*ylim)
  _label(ax, xlabel, ylabel, title)
  ax.legend(fontsize=7)
  return _save(fig, path)


def grouped_bars(groups: Sequence[str], series: dict, path, *, xlabel: str, ylabel: str,
                 title: str, hline: float | None = None, hline_label: str = "") -> pathlib.Path:
  """Bars: one group per entry of `groups`, one bar per series (label -> values)."""
  x = np.arange(len(groups))
  width = 0.8 / max(len(series), 1)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.0))
  for k, (label, values) in enumerate(series.items()):
    ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label)
  if hline is not None:
    ax.axhline(hline, color="black", lw=1, ls="--", label=hline_label or None)
  ax.set_xticks(x, groups, fontsize=8)
  _label(ax, xlabel, ylabel, title)
  ax.legend(fontsize=7)
  return _save(fig, path)


def predicted_vs_measured(panels: dict, measured, groups, path, *, title: str,
                          notes: dict | None = None) -> pathlib.Path:
  """One panel per prediction (label -> x values), measured against it, one colour per group,
  the line where prediction equals measurement, and each panel's note (e.g. its Pearson r)."""
  fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.2), sharey=True,
                           squeeze=False)
  for ax, (what, x) in zip(axes[0], panels.items()):
    _grouped_scatter(ax, x, measured, groups)
    low, high = min(np.min(x), np.min(measured)), max(np.max(x), np.max(measured))
    ax.plot([low, high], [low, high], color="black", lw=1, ls="--", label="predicted = measured")
    _note(ax, (notes or {}).get(what, ""))
    _label(ax, "\n".join(textwrap.wrap(f"{what} (tokens/s)", 50)), "measured tokens/s", "")
  axes[0][-1].legend(fontsize=7, loc="lower right")
  fig.suptitle("\n".join(textwrap.wrap(title, int(11 * fig.get_figwidth()))), fontsize=9)
  return _save(fig, path)
