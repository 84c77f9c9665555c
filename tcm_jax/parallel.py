"""Data parallelism: the device mesh, sharded batches, and the per-device step.

The trainer runs one program per device, pmap-style, built from `jax.jit` and
`jax.shard_map` over a 1-D mesh whose axis is `AXIS` ('data'): parameters and
optimizer state are replicated, the batch is split on its leading axis, and
the losses' cross-device forms (`Objective.sharded`) see the global batch.
The same code runs on one CPU, eight GPUs or a multi-host TPU slice; on
several hosts each process contributes its own rows of every batch.

  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from jax.sharding import PartitionSpec as P
  >>> from tcm_jax import parallel
  >>> mesh = parallel.data_mesh()
  >>> total = parallel.data_parallel(
  ...     lambda w, x: jax.lax.psum(jnp.sum(w * x), parallel.AXIS), mesh,
  ...     in_specs=(P(), P(parallel.AXIS)), out_specs=P())
  >>> x = parallel.shard_batch(np.arange(8.0), mesh)
  >>> float(total(parallel.replicate(jnp.float32(2.0), mesh), x))
  56.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = 'data'


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process).

  Built with `jax.sharding.Mesh`, whose axes are `Auto`: `jax.make_mesh`
  defaults to `Explicit` axes, which `shard_map` rejects for replicated
  inputs.

  Examples:
    >>> from tcm_jax import parallel
    >>> mesh = parallel.data_mesh()
    >>> mesh.axis_names, mesh.size  # the tests' 8 virtual CPU devices
    (('data',), 8)
  """
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError('devices is empty; the mesh needs at least one device.')
  return Mesh(np.array(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of parameters and optimizer state: a copy per device.

  Examples:
    >>> from tcm_jax import parallel
    >>> parallel.replicated(parallel.data_mesh()).is_fully_replicated
    True
  """
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a batch: split over the devices on its leading axis.

  Examples:
    >>> from tcm_jax import parallel
    >>> parallel.batch_sharding(parallel.data_mesh()).spec[0]
    'data'
  """
  return NamedSharding(mesh, P(AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Each leaf of `tree` as a global array with a copy on every device.

  Every process must pass the same values (as after a seeded
  initialisation); each copies them onto its own devices.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import parallel
    >>> w = parallel.replicate({'w': np.ones(3)}, parallel.data_mesh())
    >>> w['w'].sharding.is_fully_replicated
    True
  """
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

  return jax.tree.map(put, tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Global arrays from this process's rows of a batch (any pytree).

  Each process passes its own contiguous rows (`sampler.process_batch`); the
  result is the global batch, sharded over the mesh's devices in process
  order. The rows per process must divide by its local devices.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import parallel
    >>> x = parallel.shard_batch(np.zeros((16, 3)), parallel.data_mesh())
    >>> x.shape, len(x.addressable_shards)
    ((16, 3), 8)
  """
  sharding = batch_sharding(mesh)
  local_devices = len(mesh.local_devices)

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % local_devices:
      raise ValueError(
          f'a batch leaf of shape {x.shape} cannot be split over this '
          f"process's {local_devices} devices: its leading dimension must be "
          f'a multiple of {local_devices}.')
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)


def data_parallel(fn: Callable[..., Any], mesh: Mesh, *, in_specs: Any,
                  out_specs: Any, donate_argnums: int | Sequence[int] = ()
                  ) -> Callable[..., Any]:
  """`fn` as one program per device: `jax.jit(jax.shard_map(fn, ...))`.

  Inside `fn`, arrays with spec `P()` are the full replicated values and
  arrays with spec `P(AXIS)` this device's rows; collectives name `AXIS`.
  `shard_map` checks replication (`check_vma`), under which the gradients of
  replicated inputs are summed over devices by JAX itself: a loss made global
  with the losses' `sharded` forms gives the gradients of the global batch
  with no `pmean` added.

  Args:
    fn: the per-device function.
    mesh: from `data_mesh`.
    in_specs: a `PartitionSpec` per argument (pytree prefixes allowed).
    out_specs: the same for the outputs.
    donate_argnums: arguments whose buffers the result may reuse (the train
      state: the update happens in place).

  Returns:
    The compiled function over global arrays.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jax.sharding import PartitionSpec as P
    >>> from tcm_jax import parallel
    >>> mesh = parallel.data_mesh()
    >>> def loss(w, x):  # the mean over the global batch
    ...   return jax.lax.psum(jnp.sum((x * w) ** 2), parallel.AXIS) / 16
    >>> grad = parallel.data_parallel(jax.grad(loss), mesh,
    ...                               in_specs=(P(), P(parallel.AXIS)),
    ...                               out_specs=P())
    >>> x = np.arange(16.0)
    >>> float(grad(parallel.replicate(np.float32(1.0), mesh),
    ...            parallel.shard_batch(x, mesh)))  # 2 * mean(x ** 2)
    155.0
  """
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                               out_specs=out_specs),
                 donate_argnums=donate_argnums)


def to_host(x: jax.Array) -> np.ndarray:
  """The full value of a global array on every process, as NumPy.

  Examples:
    >>> import numpy as np
    >>> from tcm_jax import parallel
    >>> x = parallel.shard_batch(np.arange(8), parallel.data_mesh())
    >>> parallel.to_host(x).tolist()
    [0, 1, 2, 3, 4, 5, 6, 7]
  """
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
