"""Progress of long passes on a terminal."""


class ProgressBar:
  """A tqdm bar over the blocks of all passes (silent when not a terminal)."""

  def __init__(self, description: str):
    import tqdm  # pylint: disable=import-outside-toplevel
    self._bar = tqdm.tqdm(desc=description, unit='block', disable=None)

  def __call__(self, done: int, total: int) -> None:
    self._bar.total = total
    self._bar.n = done
    self._bar.refresh()

  def close(self) -> None:
    self._bar.close()
