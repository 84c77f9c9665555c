"""tcm_jax: threshold-consistent deep metric learning in JAX.

The loss and the metrics at the top: `tcm_loss` (and
`tcm_loss_from_embeddings`, `margins_from_similarity`), `opis`, `eps_opis`
and `evaluate_embeddings`, with `cosine_similarity`. The rest is in the
subpackages: `tcm_jax.losses` (every loss, its cross-device form, the
objective), `tcm_jax.metrics` (OPIS, retrieval, calibration, bootstrap), and
`tcm_jax.similarity`.

Importing `tcm_jax` pulls in only jax and numpy. The encoders, the input
pipeline and the trainer (`tcm_jax.models`, `tcm_jax.data`, `tcm_jax.train`,
...) need the `train` and `data` extras; each is imported when first used,
as `tcm_jax.models` or `from tcm_jax import models`.

Examples:
  >>> import jax.numpy as jnp
  >>> import tcm_jax
  >>> z = jnp.array([[0, 1], [0.43, 0.9], [1, 0], [0.5, 0.5]])
  >>> labels = jnp.array([0, 0, 1, 1])
  >>> print(f'{tcm_jax.tcm_loss(tcm_jax.cosine_similarity(z), labels):.4f}')
  0.5179
"""

import importlib
import pkgutil

__version__ = '0.2.0'

# Everything is imported on first use, so that `import tcm_jax` (and a config
# file's `from tcm_jax import config`) costs nothing until a name is used.
_EXPORTS = {
    'TCMMargins': 'tcm_jax.losses',
    'cosine_similarity': 'tcm_jax.similarity',
    'eps_opis': 'tcm_jax.metrics',
    'evaluate_embeddings': 'tcm_jax.metrics',
    'margins_from_similarity': 'tcm_jax.losses',
    'opis': 'tcm_jax.metrics',
    'tcm_loss': 'tcm_jax.losses',
    'tcm_loss_from_embeddings': 'tcm_jax.losses',
}

__all__ = sorted([*_EXPORTS, 'losses', 'metrics', 'similarity'])


def _lazy_modules() -> list[str]:
  """The public modules, each imported when first used."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__)
                if not m.name.startswith('_'))


def __getattr__(name: str):
  """The names above, and `tcm_jax.models`, `tcm_jax.train`, ...: imported
  when first used."""
  if name in _EXPORTS:
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
  if name in __all__ or name in _lazy_modules():
    try:
      return importlib.import_module(f'{__name__}.{name}')
    except ModuleNotFoundError as e:
      if e.name is None or e.name.startswith(__name__):
        raise
      extra = _EXTRAS.get(e.name.split('.')[0], 'all')
      raise ModuleNotFoundError(
          f'tcm_jax.{name} needs {e.name!r}, which the core install does not '
          f'have: pip install "tcm_jax[{extra}]" (or "tcm_jax[all]").',
          name=e.name) from e
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# The extra that installs each package the subpackages need (setup.cfg).
_EXTRAS = {
    'flax': 'train', 'optax': 'train', 'orbax': 'train', 'absl': 'train',
    'ml_collections': 'train', 'tensorboardX': 'train', 'tqdm': 'train',
    'safetensors': 'train', 'tensorflow_datasets': 'data', 'grain': 'data',
    'sklearn': 'data', 'fontTools': 'data', 'PIL': 'data', 'etils': 'data',
    'matplotlib': 'plots',
}

# The command lines, which define absl flags when imported: never imported by
# introspection (`dir`, `help`), only by name.
_COMMANDS = ('evaluate', 'main')


def __dir__() -> list[str]:
  return sorted({*__all__, *(m for m in _lazy_modules() if m not in _COMMANDS),
                 '__version__'})
