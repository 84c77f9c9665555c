"""Encoders: architecture sizes, forward and backward of every variant, input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

from tcm_jax import losses
from tcm_jax import models
from tests.fixtures import reference_cases as rc

# A small configuration of every variant (full depth, reduced width or image).
SMALL = {
    'resnet18': dict(width=0.25, small_images=True),
    'resnet34': dict(width=0.25, small_images=True),
    'resnet50': dict(width=0.25, small_images=True),
    'vit_ti': dict(patch_size=4, image_size=16),
    'vit_s': dict(patch_size=4, image_size=16),
    'vit_b': dict(patch_size=8, image_size=16),
}


def test_every_model_has_a_small_configuration():
  assert sorted(SMALL) == sorted(models.MODELS)


# Weights of the published networks without their classifiers: timm's
# parameter counts of the same backbones with num_classes=0 (torchvision's
# published ResNet counts minus the 1000-way head), stored in tests/fixtures by
# scripts/make_reference_fixtures.py. ResNet-50 about 23.5M, ViT-B about 85.8M.
_TIMM = rc.load(rc.TIMM)


def test_every_model_has_a_published_count():
  assert sorted(rc.PARAMETER_COUNTS) == sorted(models.MODELS)


@pytest.mark.parametrize('name', sorted(rc.PARAMETER_COUNTS))
def test_backbone_weights_match_the_published_architecture(name):
  encoder = models.abstract(models.create_encoder, {'name': name},
                            rngs=nnx.Rngs(0))
  assert models.num_weights(encoder.backbone) == int(
      _TIMM[f'parameters/{name}'])


def test_head_weights():
  # GeM p, LayerNorm (2 x 2048), Linear 2048 -> 512 with bias.
  encoder = models.abstract(models.create_encoder, {'name': 'resnet50'},
                            rngs=nnx.Rngs(0))
  assert models.num_weights(encoder.head) == 1 + 2 * 2048 + 2048 * 512 + 512


def _images(config, batch=4, seed=0):
  size = config.get('image_size', 16)
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _step(encoder):
  """A jitted loss-and-gradient step from the functional core."""
  graphdef, params, state = models.split(encoder)
  labels = jnp.array([0, 0, 1, 1])

  def loss_fn(params, state, images):
    z, state = models.apply(graphdef, params, state, images, train=True)
    return losses.tcm_loss_from_embeddings(z, labels) + jnp.sum(z[:, 0]), (
        z, state)

  fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  return fn, params, state


# Every variant in float32; bfloat16 once per block type (the basic and the
# bottleneck residual block, the transformer block): the depths and widths of
# a family run the same code.
_JIT_CASES = [(name, 'float32') for name in sorted(SMALL)] + [
    ('resnet18', 'bfloat16'), ('resnet50', 'bfloat16'), ('vit_ti', 'bfloat16')]


def test_every_block_type_runs_in_bfloat16():
  bf16 = [name for name, dtype in _JIT_CASES if dtype == 'bfloat16']
  resnets = models.resnet.RESNETS
  all_blocks = {arch.bottleneck for arch in resnets.values()}
  assert {resnets[n].bottleneck for n in bf16 if n in resnets} == all_blocks
  assert any(n.startswith('vit') for n in bf16)


@pytest.mark.parametrize('name,dtype', _JIT_CASES)
def test_forward_and_backward_under_jit(name, dtype):
  config = {'name': name, 'embedding_size': 32, 'dtype': dtype, **SMALL[name]}
  encoder = models.create_encoder(config, rngs=nnx.Rngs(0))
  step, params, state = _step(encoder)
  (_, (z, _)), grads = step(params, state, _images(config))

  assert z.shape == (4, 32) and z.dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.float32
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert g.dtype == jnp.float32, path
    assert np.all(np.isfinite(g)), path
  # The gradient reaches the first layer of the backbone.
  first = grads['backbone']['conv1' if name.startswith('resnet')
                            else 'patch_embed']['kernel']
  assert float(jnp.abs(first[...]).max()) > 0


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_imagenet_stem_forward_and_backward(dtype):
  # The 7x7 stride-2 convolution and 3x3 max-pool of 224-pixel inputs.
  config = {'name': 'resnet18', 'width': 0.25, 'embedding_size': 8,
            'dtype': dtype, 'image_size': 64}
  encoder = models.create_encoder(
      {k: v for k, v in config.items() if k != 'image_size'}, rngs=nnx.Rngs(0))
  assert encoder.backbone(_images(config)).shape == (4, 2, 2, 128)
  step, params, state = _step(encoder)
  (_, (z, _)), grads = step(params, state, _images(config))
  assert z.shape == (4, 8)
  stem = grads['backbone']['conv1']['kernel'][...]
  assert stem.shape == (7, 7, 3, 16)
  assert np.all(np.isfinite(stem)) and float(jnp.abs(stem).max()) > 0


@pytest.mark.parametrize('name', ['resnet18', 'vit_ti'])
def test_bfloat16_computes_in_bfloat16_and_stays_close(name):
  config = {'name': name, 'embedding_size': 16, **SMALL[name]}
  images = _images(config)
  z32 = models.create_encoder(config, rngs=nnx.Rngs(0))(images)
  bf16 = models.create_encoder({**config, 'dtype': 'bfloat16'},
                               rngs=nnx.Rngs(0))
  jaxpr = str(jax.make_jaxpr(lambda x: bf16(x))(images))
  op = 'conv_general_dilated' if name.startswith('resnet') else 'dot_general'
  bf16_ops = [line for line in jaxpr.splitlines()
              if op in line and 'bf16[' in line.split('=')[0]]
  assert bf16_ops, f'no {op} computes in bfloat16'
  z16 = bf16(images)
  assert z16.dtype == jnp.float32
  # Same weights (same seed): bfloat16 rounding only.
  cosine = jnp.sum(z32 * z16, axis=1)
  assert float(cosine.min()) > 0.98


@pytest.mark.parametrize('name', ['resnet18', 'vit_ti'])
def test_embeddings_are_unit_norm_float32_and_deterministic_in_eval(name):
  config = {'name': name, 'embedding_size': 8, **SMALL[name]}
  encoder = models.create_encoder(config, rngs=nnx.Rngs(0))
  images = _images(config)
  z = encoder(images)
  assert z.shape == (4, 8) and z.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(np.asarray(z, np.float64), axis=1),
                             1.0, rtol=1e-6)
  np.testing.assert_array_equal(encoder(images), z)


def test_frozen_batch_norm_from_scratch_trains_every_branch():
  # Frozen norms keep their initial scale: a zero-initialised last norm would
  # cut every residual branch off for good.
  config = {'name': 'resnet18', 'embedding_size': 8, 'frozen_batch_norm': True,
            **SMALL['resnet18']}
  encoder = models.create_encoder(config, rngs=nnx.Rngs(0))
  step, params, state = _step(encoder)
  (_, _), grads = step(params, state, _images(config))
  for stage in ('layer1', 'layer4'):
    g = grads['backbone'][stage][0]['conv1']['kernel'][...]
    assert float(jnp.abs(g).max()) > 0, stage


def test_gem_pooling_against_numpy():
  x = np.random.default_rng(0).uniform(0.1, 2.0, (2, 3, 4, 5)).astype(np.float32)
  gem = models.GeM(3.0)
  expected = np.mean(x**3, axis=(1, 2))**(1 / 3)
  np.testing.assert_allclose(jax.jit(lambda x: gem(x))(x), expected, rtol=1e-5)
  # p = 1 is average pooling; negative inputs are clipped at eps first.
  np.testing.assert_allclose(models.GeM(1.0)(-x), 1e-6, rtol=1e-4)
  gem.p[...] = jnp.asarray(0.2)  # Training moved it below 1: clamped, finite.
  np.testing.assert_allclose(gem(x), x.mean(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize('p', [3.0, 8.0, 20.0])
def test_gem_is_finite_with_dead_channels_and_large_p(p):
  rng = np.random.default_rng(2)
  x = rng.uniform(0.1, 2.0, (2, 3, 3, 4)).astype(np.float32)
  x[..., 1] = 0.0  # a channel ReLU switched off everywhere
  x[0, 0, 0, 2] = 50.0  # a large activation: x**p overflows float32 at p = 20

  def pooled(x, p):
    graphdef, params = nnx.split(models.GeM(3.0))
    gem = nnx.merge(graphdef, jax.tree.map(lambda _: p, params))
    return gem(x)

  out = jax.jit(pooled)(x, jnp.float32(p))
  x64 = np.maximum(x.astype(np.float64), 1e-6)
  expected = np.mean(x64**p, axis=(1, 2))**(1 / p)
  np.testing.assert_allclose(out, expected, rtol=1e-4)
  grads = jax.grad(lambda x, p: jnp.sum(pooled(x, p)), argnums=(0, 1))(
      x, jnp.float32(p))
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_gem_gradient_with_respect_to_p():
  x = jnp.asarray(
      np.random.default_rng(1).uniform(0.1, 2.0, (2, 3, 3, 4)), jnp.float32)

  def pooled(p):
    return jnp.sum(jnp.mean(x**p, axis=(1, 2))**(1 / p))

  graphdef, params = nnx.split(models.GeM(2.5))

  def module_pooled(p):
    gem = nnx.merge(graphdef, jax.tree.map(lambda _: jnp.asarray(p), params))
    return jnp.sum(gem(x))

  np.testing.assert_allclose(
      jax.grad(module_pooled)(2.5), jax.grad(pooled)(2.5), rtol=1e-5)
  check_grads(module_pooled, (2.5,), order=1, modes=['rev'], rtol=1e-2)


class TestBadInput:

  def setup_method(self):
    self.resnet = models.create_encoder(
        {'name': 'resnet18', **SMALL['resnet18']}, rngs=nnx.Rngs(0))
    self.vit = models.create_encoder({'name': 'vit_ti', **SMALL['vit_ti']},
                                     rngs=nnx.Rngs(0))

  def test_image_rank(self):
    with pytest.raises(ValueError, match=r'rank-4 .*got rank 3 .*\(16, 16, 3\)'):
      self.resnet(jnp.zeros((16, 16, 3)))

  def test_channel_count(self):
    with pytest.raises(ValueError, match=r'3 channels .*NHWC.*\(2, 3, 16, 16\)'):
      self.resnet(jnp.zeros((2, 3, 16, 16)))

  def test_vit_image_size(self):
    with pytest.raises(ValueError, match=r'16x16 .*\(2, 32, 32, 3\)'):
      self.vit(jnp.zeros((2, 32, 32, 3)))

  def test_integer_images(self):
    with pytest.raises(TypeError, match='floating point.*uint8'):
      self.resnet(jnp.zeros((2, 16, 16, 3), jnp.uint8))

  def test_unknown_model(self):
    with pytest.raises(ValueError, match=r"Unknown model 'resnet101'.*resnet50"):
      models.create_encoder({'name': 'resnet101'}, rngs=nnx.Rngs(0))

  def test_missing_name(self):
    with pytest.raises(ValueError, match="needs a 'name'"):
      models.create_encoder({'width': 1.0}, rngs=nnx.Rngs(0))

  def test_option_of_another_family(self):
    with pytest.raises(ValueError, match=r"\['patch_size'\] for 'resnet50'"):
      models.create_encoder({'name': 'resnet50', 'patch_size': 4},
                            rngs=nnx.Rngs(0))

  @pytest.mark.parametrize('option, value, expected', [
      ('embedding_size', 3.0, 'positive int'),
      ('small_images', 'False', 'True or False'),
      ('width', 0, r'number > 0'),
      ('gem_p', 0.5, r'number >= 1'),
      ('batch_norm_axis_name', 3, 'mesh axis name'),
  ])
  def test_option_types(self, option, value, expected):
    with pytest.raises(ValueError,
                       match=f'resnet18 option {option} must be (a )?{expected}'):
      models.create_encoder({'name': 'resnet18', option: value},
                            rngs=nnx.Rngs(0))

  @pytest.mark.parametrize('make, message', [
      (lambda: models.GeM(0.5), 'GeM p must be a finite number >= 1, got 0.5.'),
      # Once let through: an infinite exponent, a bool as 1.
      (lambda: models.GeM(float('inf')),
       'GeM p must be a finite number >= 1, got inf.'),
      (lambda: models.GeM(True), 'GeM p must be a finite number >= 1, got True.'),
      (lambda: models.EmbeddingHead(8, 0, rngs=nnx.Rngs(0)),
       'embedding_size must be an integer >= 1, got 0.'),
      (lambda: models.EmbeddingHead(8, True, rngs=nnx.Rngs(0)),
       'embedding_size must be an integer >= 1, got True.'),
      (lambda: models.EmbeddingHead(8, 4.0, rngs=nnx.Rngs(0)),
       'embedding_size must be an integer >= 1, got 4.0.'),
      (lambda: models.EmbeddingHead(8, 4, pool='max', rngs=nnx.Rngs(0)),
       "pool must be one of ['gem', 'cls'], got 'max'."),
      (lambda: models.ResNet('resnet18', width=0, rngs=nnx.Rngs(0)),
       'width must be a finite number > 0, got 0.'),
      (lambda: models.ResNet('resnet18', width=True, rngs=nnx.Rngs(0)),
       'width must be a finite number > 0, got True.'),
      (lambda: models.ResNet('resnet18', width=float('inf'), rngs=nnx.Rngs(0)),
       'width must be a finite number > 0, got inf.'),
  ])
  def test_bad_layer_arguments(self, make, message):
    with pytest.raises(ValueError) as error:
      make()
    assert str(error.value) == message

  def test_empty_batch(self):
    with pytest.raises(ValueError, match=r'at least one image.*\(0, 16, 16, 3\)'):
      self.resnet(jnp.zeros((0, 16, 16, 3)), train=True)

  def test_bad_dtype(self):
    with pytest.raises(ValueError, match=r"dtype must be one of .*'float64'"):
      models.create_encoder({'name': 'vit_ti', 'dtype': 'float64'},
                            rngs=nnx.Rngs(0))

  def test_patch_size_must_divide_image_size(self):
    with pytest.raises(ValueError, match=r'image_size \(30\).*patch_size \(4\)'):
      models.create_encoder(
          {'name': 'vit_ti', 'patch_size': 4, 'image_size': 30},
          rngs=nnx.Rngs(0))


def test_encoder_config_round_trips_through_create_encoder():
  config = models.encoder_config('resnet34', width=0.5, embedding_size=64)
  encoder = models.create_encoder(config, rngs=nnx.Rngs(0))
  assert encoder.backbone.arch == 'resnet34'
  assert encoder.head.proj.kernel.shape == (256, 64)


def test_training_step_with_optax_changes_weights():
  config = {'name': 'vit_ti', 'embedding_size': 16, **SMALL['vit_ti']}
  encoder = models.create_encoder(config, rngs=nnx.Rngs(0))
  step, params, state = _step(encoder)
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(params)
  (_, _), grads = step(params, state, _images(config))
  updates, _ = optimizer.update(grads, opt_state, params)
  new = optax.apply_updates(params, updates)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new)
  assert all(jax.tree.leaves(changed))
