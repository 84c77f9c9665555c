"""Proxy- and classification-based losses against NumPy references."""

import functools

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from tcm_jax import losses
from tcm_jax.losses import registry
from tests.losses import reference

enable_x64 = (jax.enable_x64 if hasattr(jax, 'enable_x64')
              else jax.experimental.enable_x64)

CASES = [
    ('normalized_softmax', losses.normalized_softmax_loss, dict()),
    ('normalized_softmax', losses.normalized_softmax_loss,
     dict(temperature=0.5)),
    ('cosface', losses.cosface_loss, dict(scale=64.0, margin=0.35)),
    ('cosface', losses.cosface_loss, dict(scale=4.0, margin=0.1)),
    ('arcface', losses.arcface_loss, dict(scale=64.0, margin=0.5)),
    ('arcface', losses.arcface_loss, dict(scale=4.0, margin=1.2)),
    ('proxy_anchor', losses.proxy_anchor_loss, dict()),
    ('proxy_anchor', losses.proxy_anchor_loss, dict(alpha=4.0, margin=0.3)),
    # exp(alpha * (1 + margin)) overflows float32: the sums must be shifted.
    ('proxy_anchor', losses.proxy_anchor_loss, dict(alpha=200.0, margin=0.5)),
]
IDS = [f'{c[0]}-{i}' for i, c in enumerate(CASES)]
LABELS = np.array([3, 0, 0, 1, 0, 2, 1, 0, 2, 4, 0, 3])  # class 5: no sample


def _reference(name, z, labels, w, **hp):
  if name == 'proxy_anchor':
    return reference.proxy_anchor(z, labels, w, **hp)
  return reference.classification(name, z, labels, w, **hp)


def _data(seed, n=12, classes=6, dim=5):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, dim)).astype(np.float32),
          rng.normal(size=(classes, dim)).astype(np.float32))


@pytest.mark.parametrize('name, loss_fn, hp', CASES, ids=IDS)
def test_value_and_gradients_match_reference(name, loss_fn, hp):
  z, w = _data(0)
  expected = _reference(name, z, LABELS, w, **hp)
  grad_z = reference.numeric_gradient(
      lambda x: _reference(name, x, LABELS, w, **hp), z)
  grad_w = reference.numeric_gradient(
      lambda x: _reference(name, z, LABELS, x, **hp), w)
  loss, (dz, dw) = jax.jit(jax.value_and_grad(
      functools.partial(loss_fn, **hp), argnums=(0, 2)))(z, LABELS, w)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
  scale = max(1.0, float(np.abs(grad_z).max()))
  np.testing.assert_allclose(dz, grad_z, rtol=1e-3, atol=1e-4 * scale)
  np.testing.assert_allclose(dw, grad_w, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize('name, loss_fn, hp', CASES[1::2], ids=IDS[1::2])
def test_check_grads(name, loss_fn, hp):
  del name
  with enable_x64(True):
    z, w = (jnp.asarray(a, jnp.float64) for a in _data(1))
    check_grads(lambda z, w: loss_fn(z, LABELS, w, **hp), (z, w), order=1,
                modes=('rev',), eps=1e-6)


@pytest.mark.parametrize('name, loss_fn, hp', CASES[::2], ids=IDS[::2])
def test_padding_one_class_and_distinct_classes(name, loss_fn, hp):
  z, w = _data(2)
  z_pad = np.concatenate([z, np.full((2, 5), np.nan, np.float32)])
  labels = np.concatenate([LABELS, [0, 1]])
  where = np.arange(14) < 12
  loss, grad = jax.value_and_grad(
      lambda x: loss_fn(x, labels, w, where=where, **hp))(z_pad)
  np.testing.assert_allclose(loss, _reference(name, z, LABELS, w, **hp),
                             rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[12:] == 0)
  for batch, labels in ((z, np.zeros(12, int)), (z[:6], np.arange(6))):
    loss, grad = jax.value_and_grad(
        lambda x: loss_fn(x, labels, w, **hp))(batch)
    np.testing.assert_allclose(loss, _reference(name, batch, labels, w, **hp),
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('call, match', [
    (lambda: losses.arcface_loss(np.zeros((3, 4)), np.zeros(3, int),
                                 np.zeros((2, 5))),
     r'proxies must be \[num_classes, 4\] .* got shape \(2, 5\)'),
    (lambda: losses.cosface_loss(np.ones((3, 4)), np.array([0, 1, 2]),
                                 np.ones((2, 4))),
     r'labels must be class indices in \[0, num_proxies\) = \[0, 2\) .* 1 '
     r'are not, e.g. \[2\]'),
    (lambda: losses.normalized_softmax_loss(np.ones((3, 4)), np.zeros(3, int),
                                            np.ones((2, 4)), temperature=0.0),
     r'temperature must be'),
    (lambda: losses.arcface_loss(np.ones((3, 4)), np.zeros(3, int),
                                 np.ones((2, 4)), margin=2.0),
     r'margin must be'),
    (lambda: losses.proxy_anchor_loss(np.ones((3, 4)), np.zeros(3),
                                      np.ones((2, 4))),
     r'labels must have an integer dtype'),
])
def test_bad_input(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call()


def test_padded_rows_may_carry_any_label():
  z, w = _data(5)
  labels = np.concatenate([LABELS[:10], [-1, 99]])
  where = np.arange(12) < 10
  for name, loss_fn, hp in CASES[::2]:
    np.testing.assert_allclose(
        loss_fn(z, labels, w, where=where, **hp),
        _reference(name, z[:10], LABELS[:10], w, **hp), rtol=1e-5,
        atol=1e-6, err_msg=name)


@pytest.mark.parametrize('alpha', [32.0, 200.0])
def test_proxy_anchor_eight_devices_equal_one(alpha):
  mesh = Mesh(np.array(jax.devices()), ('data',))
  rng = np.random.default_rng(3)
  z = rng.normal(size=(48, 8)).astype(np.float32)
  w = rng.normal(size=(12, 8)).astype(np.float32)
  labels = np.arange(48) % 10  # proxies 10, 11 have no sample
  fn = jax.jit(jax.shard_map(
      lambda z, y, w: losses.sharded_proxy_anchor_loss(
          z, y, w, axis_name='data', alpha=alpha),
      mesh=mesh, in_specs=(P('data'), P('data'), P()), out_specs=P()))
  loss, grads = jax.value_and_grad(fn, argnums=(0, 2))(z, labels, w)
  expected, expected_grads = jax.value_and_grad(
      functools.partial(losses.proxy_anchor_loss, alpha=alpha),
      argnums=(0, 2))(z, labels, w)
  assert np.isfinite(float(expected))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# Labels outside [0, num_proxies): an error when known, NaN when traced.

PROXY_LOSS_FNS = {name: loss.loss_fn
                  for name, loss in registry.PROXY_LOSSES.items()}


@pytest.mark.parametrize('name', sorted(PROXY_LOSS_FNS))
@pytest.mark.parametrize('bad_label', [-1, 6, 100])
def test_traced_labels_out_of_range_give_nan(name, bad_label):
  loss_fn = PROXY_LOSS_FNS[name]
  z, w = _data(6)  # 6 proxies
  labels = LABELS.copy()
  labels[4] = bad_label
  assert np.isnan(float(jax.jit(loss_fn)(z, labels, w)))
  # Padding is the documented way to leave a row out: any label there.
  where = np.arange(12) != 4
  padded = jax.jit(lambda z, y, w, m: loss_fn(z, y, w, where=m))(
      z, labels, w, where)
  defaults = registry.PROXY_LOSSES[name].hyperparameters()
  np.testing.assert_allclose(
      padded, _reference(name, z[where], LABELS[where], w, **defaults),
      rtol=1e-5, atol=1e-6)
  total, _ = jax.jit(registry.objective(name, tcm={}))(z, labels, w)
  assert np.isnan(float(total))


@pytest.mark.parametrize('name', sorted(PROXY_LOSS_FNS))
def test_known_labels_out_of_range_name_labels_the_value_and_num_proxies(
    name):
  z, w = _data(7)
  labels = LABELS.copy()
  labels[[2, 5]] = [-1, 100]
  with pytest.raises(ValueError, match=(
      r'labels must be class indices in \[0, num_proxies\) = \[0, 6\) \(one '
      r'row of proxies each\); 2 are not, e.g. \[-1, 100\]')):
    PROXY_LOSS_FNS[name](z, labels, w)


def test_traced_out_of_range_label_gives_nan_on_every_device():
  mesh = Mesh(np.array(jax.devices()), ('data',))
  rng = np.random.default_rng(8)
  z = rng.normal(size=(16, 8)).astype(np.float32)
  w = rng.normal(size=(4, 8)).astype(np.float32)
  labels = np.arange(16) % 4
  labels[9] = 4
  for name in sorted(PROXY_LOSS_FNS):
    fn = registry.objective(name)
    total = jax.jit(jax.shard_map(
        lambda z, y, w: fn.sharded(z, y, w, axis_name='data')[0][None],
        mesh=mesh, in_specs=(P('data'), P('data'), P()),
        out_specs=P('data')))(z, labels, w)
    assert total.shape == (8,) and np.all(np.isnan(np.asarray(total))), name
