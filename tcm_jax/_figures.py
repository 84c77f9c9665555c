"""Where the figures of `tcm_jax.plots` draw: given axes, a notebook figure,
or a bare figure written to a file."""

from __future__ import annotations


def new_axes(ax, path, figsize):
  """The figure and axes to draw into.

  Into `ax` when given; else a new pyplot figure (shown inline in notebooks)
  when there is no `path`, or a bare `Figure` when there is one (written and
  dropped, without touching pyplot or its backend).
  """
  if ax is not None:
    if path is not None:
      raise ValueError('give ax (draw into your figure, then save it) or path '
                       '(a new figure written there), not both.')
    return ax.figure, ax
  if path is None:
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=figsize)
  return fig, fig.add_subplot()


def finish(fig, path: str | None):
  """Writes the figure to `path` when given; returns it."""
  if path is not None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
  return fig
