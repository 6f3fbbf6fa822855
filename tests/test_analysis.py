"""The analysis package: the data behind each figure, not its pixels.

Curves and boundaries are checked against the published formulas; angle histograms against
counts worked out by hand; the run-based commands (embeddings, angles, compare, report) against a
tiny toy run trained here in a few steps.
"""

import json
import math
import os

import numpy as np
import pytest

from analysis import (
  angles,
  compare,
  decision_margins,
  embeddings,
  events,
  logit_curves,
  output,
  report,
  toy_figures,
)
from analysis.margin_specs import all_specs
from arcface_jax import margins


def _nonempty_png(path):
  assert path.endswith('.png') and os.path.getsize(path) > 1000
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


# ------------------------------------------------------------------ logit curves


def test_every_registered_margin_is_drawn():
  drawn = {spec.name for spec in all_specs()}
  assert set(margins.names()) <= drawn
  keys = {spec.key for spec in all_specs()}
  assert {'softmax', 'sphereface', 'cosface', 'arcface', 'cm1', 'cm2'} <= keys


def test_logit_curves_match_published_formulas():
  data = logit_curves.compute(num=181)  # 1° steps
  theta = np.deg2rad(data['theta_deg'])
  curves = data['curves']
  m = 0.5
  # Away from the fallback region θ + m > π (θ > 151.4°).
  ok = data['theta_deg'] <= 150
  np.testing.assert_allclose(curves['arcface']['value'][ok], np.cos(theta[ok] + m), atol=2e-6)
  inner = ok & (data['theta_deg'] >= 1)
  np.testing.assert_allclose(curves['arcface']['grad'][inner], -np.sin(theta[inner] + m), atol=2e-4)
  np.testing.assert_allclose(curves['cosface']['value'], np.cos(theta) - 0.35, atol=2e-6)
  np.testing.assert_allclose(curves['softmax']['value'], np.cos(theta), atol=2e-6)
  ok1 = data['theta_deg'] <= 160
  np.testing.assert_allclose(
    curves['cm2']['value'][ok1], np.cos(0.9 * theta[ok1] + 0.4) - 0.15, atol=1e-5
  )
  # A-softmax m = 4: ψ(θ) = (−1)^k cos 4θ − 2k on [kπ/4, (k+1)π/4].
  k = np.minimum(np.floor(theta / (np.pi / 4)), 3)
  psi = (-1.0) ** k * np.cos(4 * theta) - 2 * k
  np.testing.assert_allclose(curves['sphereface']['value'], psi, atol=1e-4)


def test_logit_curves_command_writes_png_and_data(tmp_path):
  logit_curves.main(['--out', str(tmp_path), '--num', '91'])
  _nonempty_png(str(tmp_path / 'logit_curves.png'))
  header, rows = output.read_csv(str(tmp_path / 'logit_curves.csv'))
  assert header[0] == 'theta_deg' and 'arcface' in header and 'd_arcface' in header
  assert len(rows) == 91
  meta = json.loads((tmp_path / 'logit_curves.json').read_text())
  assert meta['curves']['arcface']['params']['m2'] == 0.5


# ------------------------------------------------------------------ decision margins


def test_decision_margin_widths():
  data = decision_margins.compute(num=361)  # 0.5° steps
  theta_deg = data['theta_deg']
  cos_face = data['losses']['cosface']
  np.testing.assert_allclose(cos_face['width_cos'], 0.35, atol=2e-6)  # m in cos space
  arc = data['losses']['arcface']
  ok = (theta_deg >= 2) & (theta_deg <= 140)
  np.testing.assert_allclose(arc['width_angle_deg'][ok], math.degrees(0.5), atol=0.05)
  # No margin at all for the normalised softmax: f(θ) = cos θ, only the tie line θ1 = θ2.
  assert data['losses']['norm_softmax']['fractions']['margin'] <= 1.5 / 361
  np.testing.assert_allclose(data['losses']['norm_softmax']['width_cos'], 0.0, atol=1e-6)


def test_decision_regions_follow_the_boundary():
  data = decision_margins.compute(num=361)
  theta_deg = data['theta_deg']
  regions = data['losses']['arcface']['regions']  # rows θ2, columns θ1
  for i in range(10, 200, 23):  # θ1 = 5° ... 99.5°
    wins = np.nonzero(regions[:, i] == decision_margins.CLASS1)[0]
    # Class 1 wins from θ2 = θ1 + m (28.65°) upwards, to within one grid step.
    assert abs(theta_deg[wins[0]] - (theta_deg[i] + math.degrees(0.5))) <= 0.5 + 1e-9
    assert np.all(regions[wins[0] :, i] == decision_margins.CLASS1)
  # The regions are mirror images: class 2 wins at (θ1, θ2) iff class 1 wins at (θ2, θ1).
  np.testing.assert_array_equal(
    regions == decision_margins.CLASS2, (regions == decision_margins.CLASS1).T
  )


def test_decision_margins_command_writes_png_and_data(tmp_path):
  decision_margins.main(['--out', str(tmp_path), '--num', '91'])
  _nonempty_png(str(tmp_path / 'decision_margins.png'))
  header, rows = output.read_csv(str(tmp_path / 'decision_margins.csv'))
  assert 'width_angle_deg_arcface' in header and 'width_cos_cosface' in header
  assert len(rows) == 91
  summary = json.loads((tmp_path / 'decision_margins.json').read_text())
  fractions = summary['losses']['arcface']['region_fractions']
  assert abs(sum(fractions.values()) - 1.0) < 1e-9 and fractions['margin'] > 0.2


# ------------------------------------------------------------------ angle histograms


def _unit(deg):
  return np.array([np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))])


def test_angle_histograms_match_hand_counts():
  centres = np.stack([_unit(0), _unit(90), _unit(180)]) * np.array([[2.0], [0.5], [3.0]])
  # Features at known angles from their own centre (norms do not matter).
  labels = np.array([0, 0, 1, 1, 2, 0])
  feature_deg = np.array([10, -10, 90 + 35, 90 - 95, 180 - 179, 45])
  features = np.stack([_unit(d) for d in feature_deg]) * 7.0
  theta = angles.feature_centre_angles(features, labels, centres)
  np.testing.assert_allclose(theta, [10, 10, 35, 95, 179, 45], atol=1e-6)
  edges = angles.bin_edges(30.0)
  np.testing.assert_array_equal(edges, [0, 30, 60, 90, 120, 150, 180])
  np.testing.assert_array_equal(angles.histogram(theta, edges), [2, 2, 0, 1, 0, 1])
  # Centres at 0°, 90°, 180°: pairs (0, 1) 90°, (0, 2) 180° (last bin is closed), (1, 2) 90°.
  between = angles.centre_angles(centres)
  np.testing.assert_allclose(between, [90, 180, 90], atol=1e-6)
  np.testing.assert_array_equal(angles.histogram(between, edges), [0, 0, 0, 2, 0, 1])
  # Pairs: rows (0, 1) 20° apart and same, (2, 3) 130° apart and different, (4, 5) 0° and same.
  pair_embeddings = np.stack([_unit(0), _unit(20), _unit(10), _unit(140), _unit(33), _unit(33)])
  positive, negative = angles.pair_angles(pair_embeddings, np.array([True, False, True]))
  np.testing.assert_array_equal(angles.histogram(positive, edges), [2, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(angles.histogram(negative, edges), [0, 0, 0, 0, 1, 0])


def test_event_reader_round_trip_and_truncated_tail(tmp_path):
  from tensorboardX import SummaryWriter

  writer = SummaryWriter(str(tmp_path / 'tensorboard'))
  for step in (10, 20, 30):
    writer.add_scalar('train/loss', 1.0 / step, step)
  writer.add_scalar('eval/x/accuracy', 0.75, 30)
  writer.close()
  scalars = events.read_scalars(str(tmp_path))
  np.testing.assert_array_equal(scalars['train/loss'][0], [10, 20, 30])
  np.testing.assert_allclose(scalars['train/loss'][1], [0.1, 0.05, 1 / 30], rtol=1e-6)
  (path,) = events.event_files(str(tmp_path))
  with open(path, 'ab') as f:  # a record the writer has not finished
    f.write(b'\x40\x00\x00\x00\x00\x00\x00\x00\x01\x02')
  assert events.read_scalars(str(tmp_path))['eval/x/accuracy'][1].tolist() == [0.75]


def test_tsne_for_high_dimensional_features():
  rng = np.random.default_rng(0)
  features = np.concatenate([rng.normal(size=(15, 8)) + 6 * np.eye(8)[c] for c in range(3)])
  xy = embeddings.tsne(features, max_iter=250)
  assert xy.shape == (45, 2) and np.all(np.isfinite(xy))


# ------------------------------------------------------------------ from a tiny toy run


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  """configs/toy.py:arcface,tiny — 6 steps, checkpoints at 2, 4 and 6."""
  from arcface_jax import trainer

  workdir = str(tmp_path_factory.mktemp('toy') / 'arcface')
  trainer.train_and_evaluate(_tiny_config(), workdir)
  return workdir


def _tiny_config():
  from arcface_jax.config_files import load_config

  return load_config(f'{toy_figures.TOY_CONFIG}:arcface,tiny')


def test_digits_source():
  from arcface_jax.config_files import load_config
  from arcface_jax.data import digits, sources

  config = load_config(f'{toy_figures.TOY_CONFIG}:cosface')
  source = sources.get_train_source(config.data)
  assert source.num_classes == 8 and len(source) > 1000
  image, label = source[0]
  assert image.shape == (16, 16, 3) and image.dtype == np.uint8 and 0 <= label < 8
  train, test = digits.DigitsSource('train'), digits.DigitsSource('test')
  assert len(train) + len(test) == 1797 and set(test.labels) == set(range(10))
  images, issame = digits.digits_verification_pairs(40, num_classes=8)
  assert images.shape == (80, 16, 16, 3) and issame.sum() == 20


def test_run_figures(toy_run, tmp_path):
  out = str(tmp_path)
  paths = angles.write_for_run(toy_run, out, max_samples=64, num_pairs=40)
  _nonempty_png(paths['png'])
  data = json.loads(open(paths['json']).read())
  assert sorted(int(s) for s in data['steps']) == [2, 4, 6]
  for entry in data['steps'].values():
    assert sum(entry['counts']['to_own_centre']) == 64
    assert sum(entry['counts']['between_centres']) == 8 * 7 // 2
    assert sum(entry['counts']['positive_pairs']) == sum(entry['counts']['negative_pairs']) == 20
    assert 0.0 <= entry['verification']['accuracy'] <= 1.0
  header, rows = output.read_csv(paths['csv'])
  assert header == ['step', 'kind', 'bin_lo_deg', 'bin_hi_deg', 'count'] and rows

  embeddings.main(['--workdir', toy_run, '--out', out, '--max_samples', '48'])
  _nonempty_png(os.path.join(out, 'embeddings.png'))
  _nonempty_png(os.path.join(out, 'embeddings_raw.png'))
  header, rows = output.read_csv(os.path.join(out, 'embeddings.csv'))
  assert len(rows) == 48 and header[:5] == ['run', 'step', 'label', 'f0', 'f1']
  norms = np.hypot([float(r[5]) for r in rows], [float(r[6]) for r in rows])
  np.testing.assert_allclose(norms, 1.0, atol=1e-6)  # n0, n1 lie on the circle
  summary = json.loads(open(os.path.join(out, 'embeddings.json')).read())['runs'][0]
  assert summary['step'] == 6 and summary['dim'] == 2 and len(summary['centres']) == 8

  compare.main(['--workdir', toy_run, '--workdir', toy_run, '--out', out])
  _nonempty_png(os.path.join(out, 'compare.png'))
  _, rows = output.read_csv(os.path.join(out, 'compare.csv'))
  assert any(r[1] == 'train/loss' for r in rows)


def test_report_and_heldout_logging(toy_run, tmp_path):
  out = str(tmp_path / 'report')
  data = angles.compute_for_run(toy_run, max_samples=32, num_pairs=20)
  toy_figures.log_heldout_accuracy(toy_run, data)
  accuracy = events.read_scalars(toy_run)['eval/digits_heldout/accuracy']
  assert accuracy[0].tolist() == [2, 4, 6]
  angle_paths = angles.write_data(data, out, name='angles_arcface')
  index = report.write_report([toy_run], out, angle_files={toy_run: angle_paths}, max_samples=32)
  page = open(index).read()
  for name in (
    'logit_curves.png',
    'decision_margins.png',
    'embeddings.png',
    'compare.png',
    'angles_arcface.png',
    'config.json',
    'digits_heldout',
  ):
    assert name in page
  for png in ('logit_curves', 'decision_margins', 'embeddings', 'compare', 'angles_arcface'):
    _nonempty_png(os.path.join(out, png + '.png'))
