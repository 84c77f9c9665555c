"""The shared argument checks: what they accept, and their messages."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcm_jax import _array_checks
from tcm_jax import _checks


@pytest.mark.parametrize('value', [3, np.int64(3), np.uint8(3)])
def test_integers_are_python_or_numpy_integers(value):
  assert _checks.check_int('n', value, 1) == 3
  assert isinstance(_checks.check_int('n', value), int)


@pytest.mark.parametrize('value', [True, np.bool_(True), 3.0, '3', None])
def test_bools_floats_and_strings_are_not_integers(value):
  with pytest.raises(ValueError, match=f'n must be an integer >= 1, got '
                     f'{value!r}'.replace('(', r'\(').replace(')', r'\)')):
    _checks.check_int('n', value, 1)


def test_optional_and_tuple_integers():
  assert _checks.check_optional_int('block_size', np.int32(4)) == 4
  with pytest.raises(ValueError, match='a positive integer or None, got True'):
    _checks.check_optional_int('max_positives', True)
  assert _checks.check_positive_ints('ks', np.array([1, 2])) == (1, 2)
  with pytest.raises(ValueError, match='ks must be positive integers'):
    _checks.check_positive_ints('ks', (1, 2.0))
  with pytest.raises(ValueError, match='ks must be positive integers'):
    _checks.check_positive_ints('ks', ())
  with pytest.raises(TypeError, match='ks must be a tuple of positive '):
    _checks.check_positive_ints('ks', 4)


def test_traced_scalars_pass_the_checks_that_can_be_traced():

  @jax.jit
  def fn(margin):
    _checks.check_in_range('margin', margin, -1.0, 1.0)
    assert _checks.check_positive('temperature', margin) is None
    return margin

  assert fn(jnp.float32(5.0)) == 5.0  # only known at run time: not checked

  @jax.jit
  def needs_a_number(fraction):
    return _checks.check_fraction('fraction', fraction)

  with pytest.raises(TypeError, match='fraction must be a concrete number'):
    needs_a_number(0.5)


@pytest.mark.parametrize('check, args, message', [
    (_checks.check_choice, ('optimizer.name', 'adamm', ['adam', 'sgd']),
     "optimizer.name must be one of ['adam', 'sgd'], got 'adamm'."),
    (_checks.check_in_range, ('margin_pos', float('nan'), -1.0, 1.0),
     'margin_pos must be a finite number in [-1.0, 1.0], got nan.'),
    (_checks.check_positive, ('beta', 0), 'beta must be a finite positive '
     'number, got 0.'),
    (_checks.check_fraction, ('confidence', 1), 'confidence must be in '
     '(0, 1), got 1.'),
    (_checks.check_far, ('target_far', 2), 'target_far must be a false-accept '
     'rate in (0, 1], got 2.0.'),
    (_checks.check_number, ('gem_p', '2'), "gem_p must be a number, got '2'."),
    (_checks.check_type, ('axis', 3, str, 'a mesh axis name'),
     'axis must be a mesh axis name, got 3.'),
    (_checks.check_range, ('distance_range', (0.5, 0.2), -1.0, 3.0),
     'distance_range must satisfy -1.0 <= low < high <= 3.0, got (0.5, 0.2): '
     'empty or reversed.'),
    (_checks.check_positive_range, ('scale', (0.5, 2.0), 1.0),
     'scale must satisfy 0 < low <= high <= 1.0, got (0.5, 2.0).'),
    (_array_checks.check_embeddings, ('x', np.zeros(3)),
     'x must be 2-D [n, dim], got shape (3,).'),
    (_array_checks.check_labels, ('labels', np.zeros(4), 4),
     'labels must have an integer dtype (class ids), got float64.'),
    (_array_checks.check_mask, ('where', jnp.ones(4, bool), 3),
     'where must have shape (3,), got shape (4,).'),
])
def test_each_message_names_the_argument_the_expectation_and_the_value(
    check, args, message):
  with pytest.raises((ValueError, TypeError)) as error:
    check(*args)
  assert str(error.value) == message


def test_labels_wider_than_jax_integers_are_refused_before_they_wrap():
  ids = np.array([0, 2**40], np.int64)
  with pytest.raises(ValueError, match=r'labels holds class ids in \[0, '):
    _array_checks.as_labels('labels', ids, 2, 'rows')


@pytest.mark.parametrize('kwargs, value, message', [
    (dict(above=0), 0, 'w must be a number > 0, got 0.'),
    (dict(at_least=1), 0.5, 'w must be a number >= 1, got 0.5.'),
    (dict(at_most=1), 2, 'w must be a number <= 1, got 2.'),
    (dict(above=0, at_most=1), 0.0, 'w must be a number in (0, 1], got 0.0.'),
    (dict(at_least=0, at_most=180), 181, 'w must be a number in [0, 180], '
     'got 181.'),
    (dict(finite=True), float('inf'), 'w must be a finite number, got inf.'),
    (dict(finite=True), float('nan'), 'w must be a finite number, got nan.'),
    (dict(at_least=0, finite=True), -1, 'w must be a finite number >= 0, '
     'got -1.'),
    (dict(above=0, finite=True), True, 'w must be a finite number > 0, '
     'got True.'),
    (dict(at_least=0, expected='a fraction'), -0.5,
     'w must be a fraction, got -0.5.'),
    (dict(), np.array(1.0), 'w must be a number, got array(1.).'),
])
def test_check_number_bounds_finiteness_and_wording(kwargs, value, message):
  with pytest.raises(ValueError) as error:
    _checks.check_number('w', value, **kwargs)
  assert str(error.value) == message


def test_check_number_accepts_numbers_within_the_bounds_as_floats():
  for value in (0.5, 1, np.float32(0.5), np.int64(1)):
    x = _checks.check_number('w', value, above=0, at_most=1)
    assert isinstance(x, float) and x == float(value)
  # No bound, not finite: any real, as before the bounds were added.
  assert _checks.check_number('w', float('inf')) == float('inf')
  assert _checks.check_number('w', 3, above=0, at_least=5) == 3.0  # above wins


def test_check_probability():
  assert _checks.check_probability('p', 0) == 0.0
  assert _checks.check_probability('p', np.float32(1.0)) == 1.0
  for value in (-0.1, 1.5, float('nan'), True, '0.5', None):
    with pytest.raises(ValueError, match=r'p must be a probability in \[0, 1\], '
                       f'got {value!r}'.replace('.', r'\.')):
      _checks.check_probability('p', value)


def test_check_index():
  assert _checks.check_index('i', np.int64(1), 2) == 1
  assert isinstance(_checks.check_index('i', np.int64(1), 2), int)
  for value in (2, -1, 0.0, True, '0', None):
    with pytest.raises(ValueError,
                       match=rf'i must be an integer in \[0, 2\), got '
                       f'{value!r}'):
      _checks.check_index('i', value, 2)
  with pytest.raises(ValueError,
                     match=r'i must be one of 2 slots, got 2\.'):
    _checks.check_index('i', 2, 2, expected='one of 2 slots')


def test_the_checks_do_not_import_jax():
  # A traced value exists only once jax is imported: the data modules that
  # use the checks (of numbers and of integers alike) stay free of jax.
  out = subprocess.run(
      [sys.executable, '-c', 'import sys; from tcm_jax import _checks; '
       "_checks.concrete_float('x', 1.0); _checks.concrete_int('n', 2); "
       "_checks.check_choice('c', 'a', 'ab'); print('jax' in sys.modules)"],
      check=True, capture_output=True, text=True).stdout
  assert out.strip() == 'False'


def test_every_check_is_used_from_checks():
  # The integer, choice and type checks live in their own module; callers
  # use them, as the others, from tcm_jax._checks.
  from tcm_jax import _discrete_checks  # pylint: disable=g-import-not-at-top
  published = [name for name, value in vars(_discrete_checks).items()
               if callable(value) and not name.startswith('_')
               and value.__module__ == _discrete_checks.__name__]
  assert len(published) == 9, published
  for name in published:
    assert getattr(_checks, name) is getattr(_discrete_checks, name), name


def test_concrete_int_accepts_integers_and_lets_traced_integers_through():
  for value in (3, np.int64(3), np.array(3, np.int32), jnp.int32(3)):
    got = _checks.concrete_int('query_offset', value)
    assert got == 3 and isinstance(got, int)

  @jax.jit
  def fn(offset):
    assert _checks.concrete_int('query_offset', offset) is None
    return offset

  assert fn(4) == 4
  for value, received in [
      (1.5, 'float 1.5'), (2.0, 'float 2.0'), (True, 'bool True'),
      (np.float32(2), 'float32 2.0'), ('1', "str '1'"), (None, 'None'),
      (np.arange(2), r'ndarray of shape \(2,\)')]:
    with pytest.raises(TypeError, match=f'query_offset must be an integer, '
                       f'got {received}'):
      _checks.concrete_int('query_offset', value)
  with pytest.raises(TypeError, match='query_offset must be an integer, got '
                     'a traced value of dtype float32'):
    jax.jit(lambda o: _checks.concrete_int('query_offset', o))(1.0)


@pytest.mark.parametrize('labels, message', [
    (None, 'labels must be an integer array of shape (3,) (class ids), got '
     'None.'),
    (np.array(['a', 'b', 'c']), 'labels must be an integer array of shape '
     '(3,) (class ids), got array of dtype <U1 and shape (3,).'),
    ('abc', "labels must be an integer array of shape (3,) (class ids), got "
     "str 'abc'."),
    ([0, [1, 2]], 'labels must be an integer array of shape (3,) (class '
     'ids), got list [0, [1, 2]].'),
])
def test_labels_that_are_no_array_of_numbers_are_named(labels, message):
  with pytest.raises(TypeError) as error:
    _array_checks.as_labels('labels', labels, 3, 'rows')
  assert str(error.value) == message
  # Numbers keep their own messages (dtype, then shape).
  with pytest.raises(TypeError, match='labels must have an integer dtype'):
    _array_checks.as_labels('labels', np.zeros(3), 3, 'rows')


def test_host_labels_checks_numbers_then_shape_and_dtype():
  np.testing.assert_array_equal(
      _array_checks.host_labels('labels', [2, 0, 1], 3), [2, 0, 1])
  with pytest.raises(TypeError, match=r'labels must be an integer array of '
                     r'shape \(3,\) \(class ids\), got None'):
    _array_checks.host_labels('labels', None, 3)
  with pytest.raises(ValueError, match=r'labels must have shape \(3,\), one '
                     r'per row, got shape \(2,\)'):
    _array_checks.host_labels('labels', [0, 1], 3, context=', one per row')
