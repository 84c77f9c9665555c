"""tcm_jax.data.inputs: a run's splits, sampler and transforms from its config."""

import pytest

from tcm_jax import config as config_lib
from tcm_jax.data import inputs as inputs_lib


def _config(name, side):
  config = config_lib.default_config()
  config.dataset.name, config.dataset.train_side = name, side
  return config


@pytest.mark.parametrize('name, side, trainable', [
    ('digits', 'test', ['train']),
    ('glyphs', 'val', ['train', 'pretrain']),
    ('glyphs', 'test', ['train', 'pretrain']),
])
def test_create_inputs_refuses_the_sides_check_config_refuses(name, side,
                                                              trainable):
  # One check: check_config runs it before anything is built, and
  # create_inputs runs it again for a config that skipped check_config,
  # before anything is loaded.
  messages = []
  for refuses in (config_lib.check_config, inputs_lib.create_inputs):
    with pytest.raises(ValueError) as error:
      refuses(_config(name, side))
    messages.append(str(error.value))
  assert messages == 2 * [
      f'dataset.train_side must be one of {trainable} for {name} (never the '
      f'classes it is evaluated on), got {side!r}.']


def test_create_inputs_names_an_unknown_dataset_and_the_known_ones():
  with pytest.raises(ValueError) as error:
    inputs_lib.create_inputs(_config('digitz', 'train'))
  message = str(error.value)
  assert message.startswith("dataset.name must be one of ['cars196', "), message
  assert "'digits'" in message and message.endswith("got 'digitz'."), message
