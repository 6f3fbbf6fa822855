"""Identity-balanced (P×K) epoch orders: blocks of one identity, every image each epoch, exact
resume through the loader, labels read from RecordIO without decoding."""

import collections

import cv2
import numpy as np
import pytest

from arcface_jax.data import pack, recordio, sources
from arcface_jax.data.errors import CorruptSampleError, DatasetError
from arcface_jax.data.pipeline import TrainLoader
from arcface_jax.data.sampling import IdentityBalancedOrder, UniformOrder

# 7 identities with 1..7 images; sample i has label LABELS[i], interleaved as real sources are.
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(7), np.arange(1, 8)))


@pytest.mark.parametrize('k', [1, 2, 4])
def test_blocks_share_a_label_and_every_image_is_visited(k):
  order = IdentityBalancedOrder(LABELS, k, seed=1)
  counts = np.bincount(LABELS)
  assert order.length == int((-(-counts // k) * k).sum())
  for epoch in range(3):
    sequence = order(epoch)
    assert len(sequence) == order.length
    blocks = LABELS[sequence].reshape(-1, k)
    assert (blocks == blocks[:, :1]).all()  # every block is one identity
    assert set(sequence.tolist()) == set(range(len(LABELS)))  # every image at least once
    visits = collections.Counter(sequence.tolist())
    for label in range(7):  # repeats only as top-ups, fewer than K per identity
      members = np.nonzero(LABELS == label)[0]
      assert sum(visits[m] for m in members) - len(members) == (-len(members)) % k


def test_order_is_a_function_of_seed_and_epoch():
  order = IdentityBalancedOrder(LABELS, 2, seed=1)
  np.testing.assert_array_equal(order(3), IdentityBalancedOrder(LABELS, 2, seed=1)(3))
  assert not np.array_equal(order(3), order(4))
  assert not np.array_equal(order(3), IdentityBalancedOrder(LABELS, 2, seed=2)(3))
  uniform = UniformOrder(10, seed=1)
  assert sorted(uniform(0)) == list(range(10)) and not np.array_equal(uniform(0), uniform(1))


def test_unreadable_labels_are_left_out_and_bad_arguments_refused():
  labels = np.array([0, 0, -1, 1, 1, -1])
  sequence = IdentityBalancedOrder(labels, 2, seed=0)(0)
  assert sorted(sequence.tolist()) == [0, 1, 3, 4]
  with pytest.raises(DatasetError, match='no sample has a readable label'):
    IdentityBalancedOrder(np.array([-1, -1]), 2, seed=0)
  with pytest.raises(ValueError, match='images_per_identity=0'):
    IdentityBalancedOrder(labels, 0, seed=0)


class LabelledSource:
  """Image i is constant i; its label is LABELS[i]."""

  num_classes = 7
  labels = LABELS

  def __len__(self):
    return len(LABELS)

  def __getitem__(self, i):
    return np.full((4, 4, 3), i, np.uint8), int(LABELS[i])


def _loader(**kw):
  return TrainLoader(
    LabelledSource(),
    global_batch_size=8,
    seed=5,
    image_size=4,
    flip=False,
    images_per_identity=4,
    labels=LABELS,
    **kw,
  )


def test_loader_batches_are_p_identities_by_k_images_and_resume_exactly():
  loader = _loader()
  assert loader.steps_per_epoch == IdentityBalancedOrder(LABELS, 4, 5).length // 8
  iterator = loader.iterate(0)
  batches = [next(iterator) for _ in range(9)]
  for batch in batches:
    blocks = batch['label'].reshape(2, 4)
    assert (blocks == blocks[:, :1]).all()
    # each image is its sample index: the label is that sample's own
    index = batch['image'][:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(LABELS[index], batch['label'])
  resumed = _loader().iterate(6)
  for expected in batches[6:]:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], expected['image'])
    np.testing.assert_array_equal(got['label'], expected['label'])


def test_loader_refuses_a_batch_that_cuts_blocks_or_missing_labels():
  with pytest.raises(ValueError, match='not a multiple of config.data.images_per_identity=3'):
    TrainLoader(
      LabelledSource(),
      global_batch_size=8,
      seed=0,
      image_size=4,
      images_per_identity=3,
      labels=LABELS,
    )
  with pytest.raises(ValueError, match='need `labels`'):
    TrainLoader(LabelledSource(), global_batch_size=8, seed=0, image_size=4, images_per_identity=4)


@pytest.mark.parametrize('header', [True, False])
def test_recordio_labels_without_decoding(tmp_path, header):
  root = tmp_path / 'faces'
  rng = np.random.default_rng(0)
  for identity, count in enumerate([3, 1, 4]):
    (root / f'p{identity}').mkdir(parents=True)
    for k in range(count):
      cv2.imwrite(
        str(root / f'p{identity}' / f'{k}.png'), rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
      )
  pack.pack_folder(str(root), str(tmp_path / 'rec'), header=header)
  ds = recordio.RecordDataset(str(tmp_path / 'rec'))
  assert ds.has_header == header
  expected = [ds[i][1] for i in range(len(ds))]
  np.testing.assert_array_equal(sources.source_labels(ds), expected)
  np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 2, 2, 2, 2])


def test_recordio_unreadable_record_gets_label_minus_one(tmp_path, caplog):
  root = tmp_path / 'faces'
  for identity in range(2):
    (root / f'p{identity}').mkdir(parents=True)
    for k in range(2):
      cv2.imwrite(str(root / f'p{identity}' / f'{k}.png'), np.full((6, 6, 3), k, np.uint8))
  pack.pack_folder(str(root), str(tmp_path / 'rec'), header=False)
  ds = recordio.RecordDataset(str(tmp_path / 'rec'))
  offset = int(ds._offsets[2])
  with open(tmp_path / 'rec' / 'train.rec', 'r+b') as f:  # break the magic of record 2
    f.seek(offset)
    f.write(b'\0\0\0\0')
  ds = recordio.RecordDataset(str(tmp_path / 'rec'))
  with pytest.raises(CorruptSampleError, match='wrong magic'):
    ds[2]
  np.testing.assert_array_equal(ds.labels, [0, 0, -1, 1])
  assert "1 of 4 image records have no readable label" in caplog.text
