"""Data read from, and outputs written to, gs:// URIs give what local paths give.

The bucket is `fake_gcs` (tests/fake_gcs.py): fsspec's `gs` filesystem on a local directory, with
everything above it (epath, our readers and writers) running as against Cloud Storage. Each test
writes the same data locally and under gs:// and compares what the library reads back; the
fixture fails a test that wrote a gs:// path into the current directory as if it were local.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import pickle
import shutil

import cv2
import fake_gcs as fake_gcs_module
import fsspec.spec
import ml_collections
import numpy as np
import pytest
from PIL import Image

from arcface_jax import paths
from arcface_jax.data import random_access, recordio, sources, verification_bin
from arcface_jax.data.decode import decode_image
from arcface_jax.data.errors import DatasetError
from arcface_jax.data.exclude import exclude_images
from arcface_jax.data.folder import FolderDataset
from arcface_jax.evaluation import evaluators, identification, ijb
from arcface_jax.faces.gallery import Gallery
from arcface_jax.faces.images import ImageError, list_photos, load_image

fake_gcs = fake_gcs_module.fake_gcs  # the fixture (tests/fake_gcs.py)


def _png(seed: int, size: tuple[int, int] = (12, 12)) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
  ok, encoded = cv2.imencode('.png', pixels)
  assert ok
  return encoded.tobytes()


def _samples(classes: int = 3, per_class: int = 3) -> list[tuple[int, bytes]]:
  return [(c, _png(10 * c + i)) for c in range(classes) for i in range(per_class)]


def _all(dataset) -> list[tuple[np.ndarray, int]]:
  return [dataset[i] for i in range(len(dataset))]


def _assert_same(got, expected) -> None:
  assert len(got) == len(expected)
  for (image, label), (image_expected, label_expected) in zip(got, expected):
    assert label == label_expected
    np.testing.assert_array_equal(image, image_expected)


def test_recordio_written_and_read_on_gs_matches_local(fake_gcs, tmp_path):
  samples = _samples()
  local = tmp_path / 'rec'
  assert recordio.write_records(str(local), samples) == len(samples)
  assert recordio.write_records('gs://bucket/data/rec', samples) == len(samples)
  on_disk = fake_gcs / 'bucket' / 'data' / 'rec'
  for name in ('train.rec', 'train.idx', 'property'):  # the writer went through epath
    assert (on_disk / name).read_bytes() == (local / name).read_bytes()

  expected = recordio.RecordDataset(str(local))
  remote = recordio.RecordDataset('gs://bucket/data/rec')
  assert remote.rec_path == 'gs://bucket/data/rec/train.rec' and remote.has_header
  assert (remote.num_classes, remote.image_size) == (expected.num_classes, expected.image_size)
  np.testing.assert_array_equal(remote.labels, expected.labels)
  np.testing.assert_array_equal(remote.identity_ranges(), expected.identity_ranges())
  reference = _all(expected)
  _assert_same(_all(remote), reference)
  assert [label for _, label in reference] == [label for label, _ in samples]
  # Per-thread streams, and a pickled copy (a grain worker) opens its own.
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    got = list(pool.map(lambda i: remote[i % len(remote)], range(4 * len(remote))))
  _assert_same(got, reference * 4)
  copy = pickle.loads(pickle.dumps(remote))
  _assert_same(_all(copy), reference)
  remote.close()
  _assert_same(_all(remote), reference)  # reopened after close

  # The training source takes the URI from the config as it takes a local directory.
  config = ml_collections.ConfigDict({'source': 'recordio', 'path': 'gs://bucket/data/rec'})
  _assert_same(_all(sources.get_train_source(config)), reference)
  config.path = 'gs://bucket/data/missing'
  with pytest.raises(DatasetError, match='gs://bucket/data/missing.*does not exist'):
    sources.get_train_source(config)


def test_tfds_conversion_of_a_gs_folder(fake_gcs, tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  from arcface_jax.data import tfds_builders

  _folder_tree(fake_gcs / 'bucket' / 'faces')
  data_dir = str(tmp_path / 'tfds')
  name = tfds_builders.build_folder('gs://bucket/faces', data_dir, name='remote')
  source = tfds.data_source(name, data_dir=data_dir, split='train')
  expected = FolderDataset('gs://bucket/faces', split='train')
  assert len(source) == len(expected) == 12
  got = sorted((int(s['label']), s['image'].tobytes()) for s in map(source.__getitem__, range(12)))
  originals = (expected.raw(i) for i in range(len(expected)))  # the builder keeps the bytes
  assert got == sorted((label, decode_image(data).tobytes()) for data, label in originals)


def test_recordio_on_gs_reads_records_longer_than_the_first_read(fake_gcs, monkeypatch):
  monkeypatch.setattr(recordio, '_FIRST_READ', 16)  # every record needs a second ranged read
  samples = _samples(classes=2, per_class=2)
  recordio.write_records('gs://bucket/rec', samples)
  got = recordio.RecordDataset('gs://bucket/rec')
  assert [got.raw(i) for i in range(len(got))] == [(data, label) for label, data in samples]


def test_damaged_recordio_on_gs_is_one_clear_error(fake_gcs):
  recordio.write_records('gs://bucket/rec', _samples())
  (fake_gcs / 'bucket' / 'rec' / 'train.idx').write_text('not an index\n')
  with pytest.raises(DatasetError, match=r'gs://bucket/rec/train\.idx:1'):
    recordio.RecordDataset('gs://bucket/rec')
  with pytest.raises(DatasetError, match=r'gs://bucket/nothing/train\.rec not found'):
    recordio.RecordDataset('gs://bucket/nothing')


def _folder_tree(root) -> None:
  for person in range(4):
    folder = root / f'person_{person}'
    folder.mkdir(parents=True)
    for i in range(3):
      # Non-square photos: the reader's centre crop applies to bytes from either place.
      (folder / f'{i}.png').write_bytes(_png(100 + 10 * person + i, size=(14, 12)))
  (root / 'person_0' / 'notes.txt').write_text('not an image')
  (root / 'person_1' / '.hidden.png').write_bytes(_png(0))
  (root / 'empty').mkdir()


def test_folder_dataset_on_gs_lists_and_reads_the_same_samples(fake_gcs, tmp_path):
  local = tmp_path / 'faces'
  _folder_tree(local)
  shutil.copytree(local, fake_gcs / 'bucket' / 'faces')
  for split in ('train', 'val'):
    kwargs = dict(split=split, split_by='image', val_fraction=0.3, seed=1)
    expected = FolderDataset(str(local), **kwargs)
    remote = FolderDataset('gs://bucket/faces', **kwargs)
    assert remote.identities == expected.identities and remote.num_classes == 4
    assert [p.replace('gs://bucket/faces', str(local)) for p in remote.paths] == expected.paths
    np.testing.assert_array_equal(remote.labels, expected.labels)
    assert remote.num_skipped_files == expected.num_skipped_files == 2
    assert remote.num_empty_identities == expected.num_empty_identities == 1
    _assert_same(_all(remote), _all(expected))
    assert remote[0][0].shape == (12, 12, 3)

  # Closed-set identification reads gallery and probe folders the same way.
  images, names = identification.read_identity_folder('gs://bucket/faces', image_size=8)
  local_images, local_names = identification.read_identity_folder(str(local), image_size=8)
  np.testing.assert_array_equal(images, local_images)
  np.testing.assert_array_equal(names, local_names)
  assert images.shape == (12, 8, 8, 3)

  # An exclusion list on gs:// naming an image by its gs:// path and one by index.
  train = FolderDataset('gs://bucket/faces', split='all')
  (fake_gcs / 'bucket' / 'exclude.txt').write_text(f'{train.paths[4]}\n0  # by index\n')
  kept = exclude_images(train, 'gs://bucket/exclude.txt')
  assert len(kept) == len(train) - 2 and 0 not in kept.kept and 4 not in kept.kept


def test_verification_bin_on_gs(fake_gcs, tmp_path):
  images = [_png(200 + i) for i in range(8)]
  issame = [True, False, True, False]
  verification_bin.write_bin('gs://bucket/sets/tiny.bin', images, issame)
  verification_bin.write_bin(str(tmp_path / 'tiny.bin'), images, issame)
  remote_file = fake_gcs / 'bucket' / 'sets' / 'tiny.bin'
  assert remote_file.read_bytes() == (tmp_path / 'tiny.bin').read_bytes()
  assert sorted(p.name for p in remote_file.parent.iterdir()) == ['tiny.bin']  # no temporary
  got_images, got_issame = verification_bin.load_bin('gs://bucket/sets/tiny.bin', 12)
  expected_images, expected_issame = verification_bin.load_bin(str(tmp_path / 'tiny.bin'), 12)
  np.testing.assert_array_equal(got_images, expected_images)
  np.testing.assert_array_equal(got_issame, expected_issame)
  assert got_images.shape == (8, 12, 12, 3)

  # A pairs list and its images under gs:// make the same .bin.
  root = fake_gcs / 'bucket' / 'aligned'
  root.mkdir()
  for i, data in enumerate(images):
    (root / f'{i}.png').write_bytes(data)
  pairs = ''.join(f'{2 * k}.png {2 * k + 1}.png {int(s)}\n' for k, s in enumerate(issame))
  (fake_gcs / 'bucket' / 'pairs.txt').write_text(pairs)
  made = 'gs://bucket/sets/made.bin'
  assert verification_bin.make_bin('gs://bucket/pairs.txt', 'gs://bucket/aligned', made) == 4
  assert (fake_gcs / 'bucket' / 'sets' / 'made.bin').read_bytes() == remote_file.read_bytes()
  with pytest.raises(FileNotFoundError, match='gs://bucket/sets/none.bin does not exist'):
    verification_bin.load_bin('gs://bucket/sets/none.bin')
  # The evaluator's lookup of config.eval.bins in config.eval.bin_dir.
  assert evaluators.resolve_bin('tiny', 'gs://bucket/sets') == 'gs://bucket/sets/tiny.bin'
  assert evaluators.resolve_bin(made, '/elsewhere') == made
  with pytest.raises(FileNotFoundError, match='gs://bucket/sets/lfw.bin does not exist'):
    evaluators.resolve_bin('lfw', 'gs://bucket/sets')


def test_photos_read_and_listed_from_gs(fake_gcs, tmp_path):
  rng = np.random.default_rng(3)
  photo = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
  people = fake_gcs / 'bucket' / 'people'
  (people / 'ann' / 'holiday').mkdir(parents=True)
  Image.fromarray(photo).save(people / 'ann' / 'a.png')
  Image.fromarray(photo[::-1]).save(people / 'ann' / 'holiday' / 'b.png')
  (people / 'ann' / 'readme.txt').write_text('not a photo')
  (people / '.cache').mkdir()
  (people / '.cache' / 'c.png').write_bytes(b'')
  np.testing.assert_array_equal(load_image('gs://bucket/people/ann/a.png'), photo)
  listed = list_photos(['gs://bucket/people', 'gs://bucket/people/ann/a.png'])
  assert listed.photos == [
    ('gs://bucket/people/ann/a.png', 'ann'),
    ('gs://bucket/people/ann/holiday/b.png', 'ann/holiday'),
    ('gs://bucket/people/ann/a.png', ''),
  ]
  assert listed.not_photos == ['gs://bucket/people/ann/readme.txt']
  np.testing.assert_array_equal(load_image(listed.photos[1][0]), photo[::-1])
  with pytest.raises(ImageError, match='gs://bucket/people/nobody.jpg: no such file'):
    load_image('gs://bucket/people/nobody.jpg')
  with pytest.raises(ImageError, match='is a folder'):
    load_image('gs://bucket/people/ann')
  with pytest.raises(ImageError, match='not an image file'):
    load_image('gs://bucket/people/ann/readme.txt')


def test_gallery_saved_to_and_loaded_from_gs(fake_gcs):
  embeddings = np.random.default_rng(4).normal(size=(3, 8)).astype(np.float32)
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  gallery = Gallery(
    names=['ann', 'bob'],
    embeddings=embeddings,
    labels=np.array([0, 0, 1], np.int32),
    photos=['gs://b/1.jpg', 'gs://b/2.jpg', 'gs://b/3.jpg'],
    model_name='tiny',
    embedding_dim=8,
    fingerprint='abc',
  )
  gallery.save('gs://bucket/galleries/people.gallery')
  on_disk = fake_gcs / 'bucket' / 'galleries'
  assert sorted(p.name for p in on_disk.iterdir()) == ['people.gallery']
  loaded = Gallery.load('gs://bucket/galleries/people.gallery')
  assert loaded.names == gallery.names and loaded.photos == gallery.photos
  assert loaded.path == 'gs://bucket/galleries/people.gallery'
  np.testing.assert_array_equal(loaded.embeddings, gallery.embeddings)
  np.testing.assert_array_equal(loaded.labels, gallery.labels)
  with pytest.raises(ValueError, match='gs://bucket/none.gallery: no such gallery file'):
    Gallery.load('gs://bucket/none.gallery')


def test_ijb_layout_read_from_gs(fake_gcs):
  root = fake_gcs / 'bucket' / 'ijb'
  (root / 'meta').mkdir(parents=True)
  (root / 'loose_crop').mkdir()
  landmarks = '30 40 70 40 50 60 35 80 65 80'
  for i in range(2):
    (root / 'loose_crop' / f'{i}.jpg').write_bytes(_png(300 + i, size=(112, 112)))
  (root / 'meta' / 'ijbc_face_tid_mid.txt').write_text('0.jpg 1 1\n1.jpg 2 2\n')
  (root / 'meta' / 'ijbc_name_5pts_score.txt').write_text(
    f'0.jpg {landmarks} 0.9\n1.jpg {landmarks} 0.8\n'
  )
  (root / 'meta' / 'ijbc_template_pair_label.txt').write_text('1 2 0\n')
  data = ijb.read_ijb('gs://bucket/ijb')
  assert data.images == ['gs://bucket/ijb/loose_crop/0.jpg', 'gs://bucket/ijb/loose_crop/1.jpg']
  np.testing.assert_allclose(data.detector_scores, [0.9, 0.8])
  aligned = ijb.load_aligned(data.images, data.landmarks)
  local = ijb.load_aligned(
    [str(root / 'loose_crop' / f'{i}.jpg') for i in range(2)], data.landmarks
  )
  np.testing.assert_array_equal(aligned, local)
  with pytest.raises(DatasetError, match='gs://bucket/ijb/loose_crop/none.jpg'):
    ijb.load_aligned(['gs://bucket/ijb/loose_crop/none.jpg'], data.landmarks[:1])


def test_analysis_figure_and_report_written_to_gs(fake_gcs):
  import matplotlib.pyplot as plt

  from analysis import output, report

  figure, axis = plt.subplots(figsize=(2, 2))
  axis.plot([0, 1], [1, 0])
  png = output.save_figure(figure, 'gs://bucket/report', 'line')
  csv = output.write_csv(('x', 'y'), [(0, 1.0), (1, float('nan'))], 'gs://bucket/report', 'line')
  assert png == 'gs://bucket/report/line.png'
  on_disk = fake_gcs / 'bucket' / 'report'
  with Image.open(io.BytesIO((on_disk / 'line.png').read_bytes())) as image:
    assert image.format == 'PNG' and min(image.size) > 50
  assert output.read_csv(csv) == (['x', 'y'], [['0', '1.0'], ['1', '']])

  # The page: relative links to the figure and its data, and a run's config read from gs://.
  run = fake_gcs / 'bucket' / 'runs' / 'a'
  run.mkdir(parents=True)
  (run / 'config.json').write_text(json.dumps({'loss': {'name': 'arcface'}}))
  sections = [
    report.figure_section('Line', {'png': png, 'csv': csv}, 'gs://bucket/report'),
    report.config_section('gs://bucket/runs/a', 'run a'),
  ]
  page = report.write_page('gs://bucket/report', 'remote', sections)
  assert page == 'gs://bucket/report/index.html'
  text = (on_disk / 'index.html').read_text()
  assert 'src="line.png"' in text and 'href="line.csv"' in text
  assert 'gs://bucket/runs/a/config.json' in text and '&quot;arcface&quot;' in text

  written = output.write_text('| a |\n', 'gs://bucket/table', 'table.md')
  assert written == 'gs://bucket/table/table.md' and output.exists(written)
  assert output.read_text(written) == '| a |\n'


def test_align_folder_reads_and_writes_gs(fake_gcs, tmp_path):
  from arcface_jax.data import align

  points = '30 40 70 40 50 60 35 80 65 80'
  for root in (tmp_path / 'raw', fake_gcs / 'bucket' / 'raw'):
    (root / 'ann').mkdir(parents=True)
    (root / 'ann' / 'a.png').write_bytes(_png(400, size=(100, 100)))
    (root / 'landmarks.txt').write_text(f'ann/a.png {points}\nann/missing.png {points}\n')
  local = align.align_folder(tmp_path / 'raw', tmp_path / 'raw' / 'landmarks.txt', tmp_path / 'out')
  remote = align.align_folder(
    'gs://bucket/raw', 'gs://bucket/raw/landmarks.txt', 'gs://bucket/out', size=112
  )
  assert local[0] == remote[0] == 1
  assert remote[1] == ['gs://bucket/raw/ann/missing.png']
  written = fake_gcs / 'bucket' / 'out' / 'ann' / 'a.png'
  np.testing.assert_array_equal(
    cv2.imread(str(written)), cv2.imread(str(tmp_path / 'out' / 'ann' / 'a.png'))
  )


def test_initial_centres_from_gs(fake_gcs):
  from arcface_jax.class_centres import initial_centres

  centres = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
  (fake_gcs / 'bucket').mkdir()
  with (fake_gcs / 'bucket' / 'centres.npy').open('wb') as f:
    np.save(f, centres)
  np.testing.assert_array_equal(initial_centres('gs://bucket/centres.npy', (3, 4)), centres)
  with pytest.raises(ValueError, match='gs://bucket/none.npy'):
    initial_centres('gs://bucket/none.npy', (3, 4))


def test_local_paths_keep_their_fast_path(tmp_path):
  # No fake bucket here: local reads must not touch fsspec (os.pread / open, as before).
  recordio.write_records(str(tmp_path / 'rec'), _samples(classes=1, per_class=2))
  dataset = recordio.RecordDataset(tmp_path / 'rec')  # an os.PathLike is taken too
  assert not dataset._file.remote and len(dataset) == 2
  assert paths.join(tmp_path, 'a', 'b') == str(tmp_path / 'a' / 'b')
  assert paths.join('gs://bucket/x', 'a', 'b') == 'gs://bucket/x/a/b'


class _RangedFile(fsspec.spec.AbstractBufferedFile):
  """An fsspec buffered file over bytes that records each range it fetches (as gcsfs would GET)."""

  def __init__(self, data: bytes):
    self.data = data
    self.fetched: list[tuple[int, int]] = []
    super().__init__(fsspec.filesystem('memory'), 'ranged', mode='rb', size=len(data))

  def _fetch_range(self, start: int, end: int) -> bytes:
    self.fetched.append((start, end))
    return self.data[start:end]


def test_remote_streams_fetch_only_the_bytes_of_a_record():
  data = bytes(range(256)) * 40_000  # 10 MB: larger than the read-ahead block
  buffered = _RangedFile(data)
  buffered.seek(1_000_000)
  assert buffered.read(100) == data[1_000_000:1_000_100]
  assert buffered.fetched[0][1] - buffered.fetched[0][0] > 1_000_000  # fsspec reads ahead
  ranged = random_access.no_read_ahead(_RangedFile(data))
  for offset in (9_000_000, 17, 4_000_000):
    ranged.seek(offset)
    assert ranged.read(100) == data[offset : offset + 100]
  assert ranged.fetched == [(9_000_000, 9_000_100), (17, 117), (4_000_000, 4_000_100)]
