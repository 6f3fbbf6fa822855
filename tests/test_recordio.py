"""RecordIO: pack → read round trips (face layout and im2rec), split records, bad data."""
import os
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from arcface_jax.data import pack, recordio
from arcface_jax.data.errors import CorruptSampleError, DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def faces(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'faces'
  images = {}
  for identity in ('alice', 'bob', 'carol'):
    (root / identity).mkdir(parents=True)
    for k in range(3):
      image = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
      cv2.imwrite(str(root / identity / f'{k}.png'), image[..., ::-1])  # RGB → BGR on disk
      images[(identity, k)] = image
  (root / 'empty').mkdir()
  (root / 'bob' / 'notes.txt').write_text('not an image')
  return root, images


@pytest.mark.parametrize('header', [True, False])
def test_pack_read_round_trip_is_exact(faces, tmp_path, header):
  root, images = faces
  out = tmp_path / 'rec'
  assert pack.pack_folder(str(root), str(out), header=header) == 9
  ds = recordio.RecordDataset(str(out))
  assert len(ds) == 9 and ds.num_classes == 3
  expected = [images[(name, k)] for name in ('alice', 'bob', 'carol') for k in range(3)]
  for i in range(9):
    image, label = ds[i]
    np.testing.assert_array_equal(image, expected[i])  # RGB out, exactly
    assert label == i // 3


def test_payload_containing_the_magic_is_split_and_reassembled(tmp_path):
  magic = struct.pack('<I', recordio.MAGIC)
  _, png = cv2.imencode('.png', np.zeros((4, 4, 3), np.uint8))
  # The header is 24 bytes, so the magic lands 4-byte aligned at offsets 24 + 4k.
  image_bytes = png.tobytes()
  payload = recordio.pack_payload(1.0, magic + b'abcd' + magic + image_bytes)
  rec, idx = tmp_path / 'train.rec', tmp_path / 'train.idx'
  with recordio.RecordWriter(str(rec), str(idx)) as writer:
    writer.write(0, recordio.pack_payload(0.0, image_bytes))
    writer.write(1, payload)
  raw = rec.read_bytes()
  cflags = []
  offset = 0
  while offset < len(raw):
    m, lrec = struct.unpack_from('<II', raw, offset)
    assert m == recordio.MAGIC
    cflags.append(lrec >> 29)
    length = lrec & ((1 << 29) - 1)
    offset += 8 + length + (-length % 4)
  assert cflags == [0, 1, 2, 3]
  ds = recordio.RecordDataset(str(tmp_path))
  label, body = ds._read_record(ds._offsets[1])
  assert label == 1.0 and body == magic + b'abcd' + magic + image_bytes


def test_bad_samples_raise_corrupt_sample_errors(faces, tmp_path):
  root, _ = faces
  out = tmp_path / 'rec'
  pack.pack_folder(str(root), str(out), header=False)
  rec = out / 'train.rec'
  data = bytearray(rec.read_bytes())
  offsets = [int(line.split('\t')[1]) for line in (out / 'train.idx').read_text().splitlines()]
  data[offsets[1]:offsets[1] + 4] = b'\0\0\0\0'  # wrong magic on record 1
  body = offsets[2] + 8 + 24  # image bytes of record 2: corrupt the PNG signature
  data[body:body + 8] = b'garbage!'
  rec.write_bytes(bytes(data))
  ds = recordio.RecordDataset(str(out))
  with pytest.raises(CorruptSampleError, match='wrong magic'):
    ds[1]
  with pytest.raises(CorruptSampleError, match='decode'):
    ds[2]
  ds[0]  # neighbours still read
  rec.write_bytes(bytes(data[:offsets[-1] + 10]))  # truncate the last record
  with pytest.raises(CorruptSampleError, match='truncated'):
    ds[8]


def test_label_outside_the_class_count_is_a_bad_sample(faces, tmp_path):
  root, _ = faces
  out = tmp_path / 'rec'
  pack.pack_folder(str(root), str(out))
  (out / 'property').write_text('2,12,12\n')  # claims 2 classes; carol is label 2
  ds = recordio.RecordDataset(str(out))
  with pytest.raises(CorruptSampleError, match='label 2'):
    ds[8]


def test_unusable_directory_is_one_clear_error(tmp_path):
  with pytest.raises(DatasetError, match='train.rec'):
    recordio.RecordDataset(str(tmp_path))
  (tmp_path / 'train.rec').write_bytes(b'')
  (tmp_path / 'train.idx').write_text('not an index\n')
  with pytest.raises(DatasetError, match='train.idx:1'):
    recordio.RecordDataset(str(tmp_path))


def test_pack_command_end_to_end(faces, tmp_path):
  root, _ = faces
  out = tmp_path / 'cmd'
  result = subprocess.run([sys.executable, '-m', 'arcface_jax.data.pack', str(root), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert 'packed 9 images' in result.stdout
  assert (out / 'property').read_text().strip() == '3,12,12'
  bad = subprocess.run([sys.executable, '-m', 'arcface_jax.data.pack', str(tmp_path / 'nope'),
                        str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and 'nope' in bad.stderr and 'Traceback' not in bad.stderr
