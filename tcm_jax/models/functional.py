"""The functional core: an encoder as a graph definition and two state pytrees.

The trainer's step is a pure function of pytrees. `split` takes an NNX module
apart into its static graph definition, its trainable parameters (every
`nnx.Param`: the optimizer's business) and the rest of its state (BatchNorm
statistics, frozen weights); `apply` runs it from those and returns the state
as the call left it (training BatchNorm updates its running statistics).
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import numpy as np

from tcm_jax.models._layers import Frozen


def split(module: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """`(graphdef, params, state)`: the structure, the parameters, the rest.

  `params` holds the `nnx.Param` variables, `state` every other variable.

  Examples:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> from tcm_jax.models import create_encoder, split, apply
    >>> encoder = create_encoder(
    ...     {'name': 'resnet18', 'width': 0.25, 'small_images': True,
    ...      'embedding_size': 8}, rngs=nnx.Rngs(0))
    >>> graphdef, params, state = split(encoder)
    >>> z, state = apply(graphdef, params, state, jnp.ones((4, 16, 16, 3)),
    ...                  train=True)
    >>> z.shape
    (4, 8)
  """
  return nnx.split(module, nnx.Param, ...)


def merge(graphdef: nnx.GraphDef, params: nnx.State, state: nnx.State
          ) -> nnx.Module:
  """The module back from `split`'s parts.

  Examples:
    >>> from flax import nnx
    >>> from tcm_jax.models import merge, split
    >>> layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> merge(*split(layer)).kernel.shape
    (2, 3)
  """
  return nnx.merge(graphdef, params, state)


def apply(graphdef: nnx.GraphDef, params: nnx.State, state: nnx.State,
          images: jax.typing.ArrayLike, *, train: bool = False,
          features: bool = False) -> tuple[jax.Array, nnx.State]:
  """Runs the encoder from its parts: `(output, new_state)`.

  Pure: no argument is changed, so it can be jitted, differentiated with
  respect to `params`, and run per device under `jax.shard_map`.

  Args:
    graphdef, params, state: from `split`.
    images: `[batch, height, width, channels]`.
    train: BatchNorm normalises with batch statistics and updates its running
      averages in `new_state` (frozen BatchNorm never does).
    features: return the backbone's features (before the embedding head)
      instead of the embeddings.

  Returns:
    The embeddings `[batch, embedding_size]` (or the features) and the state
    after the call.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from tcm_jax.models import apply, create_encoder, split
    >>> graphdef, params, state = split(create_encoder(
    ...     {'name': 'vit_ti', 'patch_size': 4, 'image_size': 8},
    ...     rngs=nnx.Rngs(0)))
    >>> forward = jax.jit(lambda p, s, x: apply(graphdef, p, s, x,
    ...                                         features=True))
    >>> tokens, _ = forward(params, state, jnp.zeros((2, 8, 8, 3)))
    >>> tokens.shape  # CLS + 4 patches, width 192
    (2, 5, 192)
  """
  # Fresh Variables, made at this trace level: Flax refuses to update one made
  # at another, and BatchNorm updates its running averages inside `jax.grad`.
  module = nnx.merge(graphdef, params, state, copy=True)
  if features:
    output = module.backbone(images, train=train)
  else:
    output = module(images, train=train)
  return output, nnx.state(module, nnx.Not(nnx.Param))


def num_weights(module: nnx.Module) -> int:
  """Number of weights: trainable and frozen, not BatchNorm statistics.

  What `sum(p.numel() for p in torch_model.parameters())` counts.

  Examples:
    >>> from flax import nnx
    >>> from tcm_jax.models import num_weights
    >>> num_weights(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    8
  """
  weights = nnx.state(module, nnx.Any(nnx.Param, Frozen))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(weights))


def abstract(factory: Any, *args: Any, rngs: nnx.Rngs, **kwargs: Any
             ) -> nnx.Module:
  """The module `factory(*args, rngs=rngs, **kwargs)` would build, unallocated.

  Its arrays are `jax.ShapeDtypeStruct` stand-ins: enough to count weights
  or plan memory for a model too large to initialise here.

  Examples:
    >>> from flax import nnx
    >>> from tcm_jax.models import abstract, create_encoder, num_weights
    >>> encoder = abstract(create_encoder, {'name': 'resnet50'},
    ...                    rngs=nnx.Rngs(0))
    >>> num_weights(encoder.backbone)
    23508032
  """
  return nnx.eval_shape(
      lambda rngs: factory(*args, rngs=rngs, **kwargs), rngs)
