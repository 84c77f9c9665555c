"""Figures: the densities they draw are right, and bad input is refused."""

import matplotlib

matplotlib.use('Agg')

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import pytest

from tcm_jax import metrics
from tcm_jax import plots


def _on_circle(degrees, radius=1.0):
  radians = np.deg2rad(np.asarray(degrees, dtype=float))
  return radius * np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_circle_density_matches_a_loop_over_samples():
  rng = np.random.default_rng(0)
  labels = np.repeat([3, 7, 9], [5, 11, 20])  # unequal classes
  degrees = rng.uniform(-180, 180, size=len(labels))
  radius = rng.uniform(0.5, 3.0, size=(len(labels), 1))  # scale is ignored
  classes, density = plots.embedding_density(
      _on_circle(degrees) * radius, labels, bins=12)
  expected = np.zeros((3, 12))
  for label, angle in zip(labels, degrees):
    row = [3, 7, 9].index(label)
    expected[row, int((angle + 180) // 30) % 12] += 1 / np.sum(labels == label)
  np.testing.assert_array_equal(classes, [3, 7, 9])
  np.testing.assert_allclose(density, expected, atol=1e-12)


def test_smoothing_wraps_around_and_keeps_the_mass():
  # One sample just below +180 degrees: smoothing spreads it to both sides of
  # the seam, the mass stays 1, and the spread is symmetric about the sample.
  _, plain = plots.embedding_density(_on_circle([179.0]), [0], bins=360)
  _, smooth = plots.embedding_density(_on_circle([179.0]), [0], bins=360,
                                      smoothing=5.0)
  assert plain[0, 359] == 1.0
  assert smooth.sum() == pytest.approx(1.0)
  assert smooth[0, 0] == pytest.approx(smooth[0, 358])  # +-1 bin over the seam
  assert smooth[0, 5] > 1e-4 and smooth[0, 180] < 1e-12
  assert np.argmax(smooth[0]) == 359


def test_sphere_density_is_equal_area_and_sums_to_one():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(200_000, 3))  # uniform on the sphere once normalised
  labels = np.zeros(len(z), int)
  classes, density = plots.embedding_density(z, labels, bins=8)
  assert classes.tolist() == [0] and density.shape == (1, 4, 8)
  assert density.sum() == pytest.approx(1.0)
  # Equal-area cells: a uniform sphere fills them evenly (within sampling).
  np.testing.assert_allclose(density[0], 1 / 32, rtol=0.06)  # 4.5 sd


@pytest.mark.parametrize('z, labels, kwargs, message', [
    (np.ones((4, 5)), [0, 0, 1, 1], {}, r'\[N, 2\] or \[N, 3\].*\(4, 5\)'),
    (np.ones((4, 2)), [0, 1], {}, r'labels must have shape \(4,\)'),
    (np.array([[1., 0.], [0., 0.], [np.nan, 1.]]), [0, 0, 1], {},
     '2 of 3 rows'),
    (np.ones((2, 2)), [0, 1], {'bins': 1},
     r'bins must be an integer >= 2, got 1\.'),
    (np.ones((2, 2)), [0, 1], {'smoothing': -1.0},
     r'smoothing must be a finite number of degrees >= 0, got -1\.0\.'),
    # Once refused by NumPy only (a TypeError), or let through (an infinite
    # or a bool kernel width).
    (np.ones((2, 2)), [0, 1], {'bins': 4.5},
     r'bins must be an integer >= 2, got 4\.5\.'),
    (np.ones((2, 2)), [0, 1], {'smoothing': np.inf},
     r'smoothing must be a finite number of degrees >= 0, got inf\.'),
    (np.ones((2, 2)), [0, 1], {'smoothing': True},
     r'smoothing must be a finite number of degrees >= 0, got True\.'),
])
def test_density_refuses_bad_input(z, labels, kwargs, message):
  with pytest.raises(ValueError, match=message):
    plots.embedding_density(z, labels, **kwargs)


def test_circle_figure_puts_each_class_at_its_angle():
  labels = np.repeat([4, 8], 30)
  z2 = _on_circle(np.where(labels == 4, 15.0, -125.0))
  fig = plots.plot_embedding_density(z2, labels, bins=36, smoothing=0)
  ax = fig.axes[0]
  image = ax.images[0]
  assert image.get_extent() == [-180, 180, -0.5, 1.5]
  assert [t.get_text() for t in ax.get_yticklabels()] == ['4', '8']
  assert image.get_array().shape == (2, 36)
  # 10-degree bins from -180: 15 degrees in bin 19, -125 in bin 5.
  assert image.get_array()[0].argmax() == 19
  assert image.get_array()[1].argmax() == 5
  assert image.get_array().max() == 1.0  # each row scaled to its peak
  plt.close(fig)


def test_sphere_figure_colours_each_class_and_mixes_overlaps():
  # Class 0 at longitude 15, class 1 at -125, class 2 split between both.
  degrees = np.array([15.0] * 10 + [-125.0] * 10 + [15.0] * 5 + [-125.0] * 5)
  labels = np.repeat([0, 1, 2], [10, 10, 10])
  z3 = np.concatenate([_on_circle(degrees), np.zeros((30, 1))], axis=1)
  fig = plots.plot_embedding_density(z3, labels, bins=36)
  ax = fig.axes[0]
  rgb = ax.images[0].get_array()
  tab10 = [np.array(matplotlib.colormaps['tab10'](i)[:3]) for i in range(3)]
  assert rgb.shape == (18, 36, 3)
  assert np.all(rgb[0] == 1.0)  # nothing near the south pole: white
  # On the equator (row 9): classes 0 and 2 at 15 degrees, each at its peak,
  # so the pixel is their mean colour; likewise classes 1 and 2 at -125.
  np.testing.assert_allclose(rgb[9, 19], (tab10[0] + tab10[2]) / 2)
  np.testing.assert_allclose(rgb[9, 5], (tab10[1] + tab10[2]) / 2)
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ['0', '1', '2']
  plt.close(fig)


def test_density_figures_refuse_what_they_cannot_draw(tmp_path):
  rng = np.random.default_rng(3)
  with pytest.raises(ValueError, match='at most 20 classes'):
    plots.plot_embedding_density(rng.normal(size=(42, 3)), np.arange(42) // 2)
  with pytest.raises(ValueError, match='2-D embeddings only'):
    plots.embedding_density(rng.normal(size=(4, 3)), [0, 0, 1, 1],
                            smoothing=2.0)
  with pytest.raises(ValueError, match='embeddings is empty'):
    plots.embedding_density(np.zeros((0, 2)), np.zeros(0))
  fig, ax = plt.subplots()
  with pytest.raises(ValueError, match='not both'):
    plots.plot_embedding_density(_on_circle([0, 90]), [0, 1], ax=ax,
                                 path=str(tmp_path / 'x.png'))
  plt.close(fig)


def test_writing_a_file_leaves_pyplot_alone(tmp_path):
  before, backend = plt.get_fignums(), matplotlib.get_backend()
  fig = plots.plot_embedding_density(_on_circle([0, 90, 180]), [0, 1, 1],
                                     str(tmp_path / 'density.png'))
  assert plt.get_fignums() == before and matplotlib.get_backend() == backend
  assert fig.axes and (tmp_path / 'density.png').stat().st_size > 0


def test_opis_vs_recall_draws_every_run_and_the_mean_arrows():
  runs = [dict(loss=loss, tcm=tcm, recall_at_1=r, opis=o)
          for loss, tcm, r, o in [('arcface', False, .80, .020),
                                  ('arcface', False, .82, .024),
                                  ('arcface', True, .83, .010),
                                  ('contrastive', False, .70, .030),
                                  ('contrastive', True, .69, .040)]]
  fig = plots.plot_opis_vs_recall(iter(runs))  # any iterable
  ax = fig.axes[0]
  points = sorted(tuple(p) for c in ax.collections for p in c.get_offsets())
  assert points == sorted((r['recall_at_1'], r['opis']) for r in runs)
  arrows = [(a.xy, a.xyann) for a in ax.texts]  # head at the TCM mean
  assert ((0.83, 0.010), (0.81, 0.022)) in [
      (tuple(np.round(h, 6)), tuple(np.round(t, 6))) for h, t in arrows]
  assert len(arrows) == 2
  plt.close(fig)


@pytest.mark.parametrize('runs, message', [
    ([], 'runs is empty'),
    ([dict(loss='a', tcm=True, opis=0.1)], r"runs\[0\] lacks \['recall_at_1'\]"),
    ([dict(loss='a', tcm='False', recall_at_1=.5, opis=.1)],
     r"runs\[0\]\['tcm'\] must be True or False, got 'False'"),
    ([dict(loss='a', tcm=True, recall_at_1=np.nan, opis=.1)], 'non-finite'),
])
def test_opis_vs_recall_refuses_bad_runs(runs, message):
  with pytest.raises(ValueError, match=message):
    plots.plot_opis_vs_recall(runs)


def test_utility_curves_into_given_axes_and_to_a_file(tmp_path):
  rng = np.random.default_rng(2)
  labels = np.repeat(np.arange(5), 8)
  z = rng.normal(size=(5, 6))[labels] + rng.normal(size=(40, 6))
  evaluation = metrics.evaluate_embeddings(z, labels)
  curves = evaluation.curves
  fig, axes = plt.subplots(1, 2)
  returned = plots.plot_utility_curves(curves, curves.calibration_range,
                                       ax=axes[1], worst_classes=[2])
  assert returned is fig
  assert not axes[0].lines and len(axes[1].lines) == 5 + 1 + 1  # + worst, mean
  np.testing.assert_allclose(axes[1].lines[-1].get_ydata(),
                             curves.utility.mean(axis=0))
  plt.close(fig)
  path = tmp_path / 'curves.png'
  plots.plot_utility_curves(curves, curves.calibration_range, str(path))
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def _shaded_span(ax):
  """The x extent of the shaded calibration range (the axvspan patch)."""
  (span,) = [p for p in ax.patches if p.get_label().startswith('calibration')]
  if hasattr(span, 'get_width'):  # a Rectangle (matplotlib >= 3.9)
    return span.get_x(), span.get_x() + span.get_width()
  xs = np.asarray(span.get_xy())[:, 0]  # a Polygon before
  return xs.min(), xs.max()


def test_utility_curves_of_two_runs_share_a_fixed_axis_and_their_titles():
  # Two sets whose calibration ranges differ: once each figure's x-axis was
  # its own range, so two runs could not be laid side by side.
  rng = np.random.default_rng(4)
  labels = np.repeat(np.arange(5), 8)
  figures = []
  for spread, title in ((0.5, 'run-a: arcface + TCM, the test split'),
                        (2.0, 'run-b: arcface without TCM, the test split')):
    z = rng.normal(size=(5, 6))[labels] + spread * rng.normal(size=(40, 6))
    curves = metrics.evaluate_embeddings(z, labels).curves
    fig = plots.plot_utility_curves(curves, curves.calibration_range,
                                    title=title)
    ax = fig.axes[0]
    assert ax.get_title() == title
    assert ax.get_xlim() == (0.0, 2.0)
    np.testing.assert_allclose(_shaded_span(ax),
                               curves.calibration_range.distance)
    figures.append((fig, curves.calibration_range.distance))
    plt.close(fig)
  assert figures[0][1] != figures[1][1]
  # Zooming in stays possible, and is checked.
  fig = plots.plot_utility_curves(curves, curves.calibration_range,
                                  xlim=(0.2, 1.2))
  assert fig.axes[0].get_xlim() == (0.2, 1.2)
  plt.close(fig)
  with pytest.raises(ValueError, match=r'xlim .* got \(1\.2, 0\.2\)'):
    plots.plot_utility_curves(curves, curves.calibration_range,
                              xlim=(1.2, 0.2))


def _verification_set(seed=0, classes=30, per_class=8):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(classes), per_class)
  z = (rng.normal(size=(classes, 16))[labels]
       + rng.normal(size=(classes * per_class, 16)))
  return z, labels


def test_det_curves_draw_each_set_on_log_axes(tmp_path):
  z, labels = _verification_set()
  tight = metrics.operating_points(z, labels)
  loose = metrics.operating_points(
      z + 2 * np.random.default_rng(1).normal(size=z.shape), labels)
  fig = plots.plot_det_curve({'tight': tight, 'loose': loose})
  ax = fig.axes[0]
  curves = [line for line in ax.lines if line.get_label().startswith(
      ('tight', 'loose'))]
  assert [c.get_label() for c in curves] == [
      f'tight: EER {tight.eer:.3f}', f'loose: EER {loose.eer:.3f}']
  x, y = curves[0].get_data()
  drawn = (tight.far > 0) & (tight.tar < 1)
  np.testing.assert_array_equal(x, tight.far[drawn])
  np.testing.assert_array_equal(y, tight.frr[drawn])
  assert (ax.get_xscale(), ax.get_yscale()) == ('log', 'log')
  assert any(line.get_label() == 'target FAR 0.01' for line in ax.lines)
  plt.close(fig)
  path = tmp_path / 'det.png'
  plots.plot_det_curve(tight, str(path))
  assert path.stat().st_size > 0
  with pytest.raises(TypeError, match='points must be one OperatingPoints'):
    plots.plot_det_curve([tight])
  with pytest.raises(TypeError, match=r"points\['a'\] must be"):
    plots.plot_det_curve({'a': tight.calibration})


def test_class_rates_put_one_dot_per_class_and_the_target_lines():
  z, labels = _verification_set(seed=2)
  calibration = metrics.operating_points(z, labels,
                                         target_far=0.05).calibration
  fig = plots.plot_class_rates(calibration)
  ax = fig.axes[0]
  np.testing.assert_array_equal(
      ax.collections[0].get_offsets(),
      np.stack([calibration.class_far, calibration.class_frr], axis=1))
  assert ax.lines[0].get_xdata()[0] == 0.05  # the target
  assert ax.lines[2].get_ydata()[0] == calibration.frr
  plt.close(fig)
  with pytest.raises(TypeError, match='ThresholdCalibration'):
    plots.plot_class_rates({'far': 0.1})


def test_transfer_figures_of_a_split_and_of_folds():
  z, labels = _verification_set(seed=3, classes=40)
  first = labels < 20
  split = metrics.calibration_transfer(z[~first], labels[~first], z[first],
                                       labels[first],
                                       target_fars=(1e-4, 0.01, 0.1))
  fig = plots.plot_calibration_transfer(split)
  chosen, used = fig.axes[0].collections
  resolved = [p for p in split.points if p is not None]  # 1e-4 is not
  np.testing.assert_allclose(chosen.get_offsets()[:, 1],
                             [p.calibration_far for p in resolved])
  np.testing.assert_allclose(used.get_offsets()[:, 1],
                             [max(p.far, 1e-3) for p in resolved])
  plt.close(fig)
  folds = metrics.fold_transfer(z, labels, folds=4)
  fig = plots.plot_calibration_transfer(folds)
  means = fig.axes[0].collections[-1]
  np.testing.assert_allclose(means.get_offsets()[:, 1],
                             folds.far.mean(axis=0))
  plt.close(fig)
  with pytest.raises(TypeError, match='CalibrationTransfer or a FoldTransfer'):
    plots.plot_calibration_transfer(split.points[1])
