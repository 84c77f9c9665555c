"""The machine a benchmark ran on, named in its output."""


def cpu_name():
  """The CPU model from /proc/cpuinfo, or 'CPU' where there is none."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return 'CPU'
