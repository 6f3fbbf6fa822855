"""RecordIO: pack → read round trips (face layout and im2rec), split records, bad data."""

import concurrent.futures
import multiprocessing
import os
import pickle
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from arcface_jax.data import pack, recordio
from arcface_jax.data.decode import encode_image
from arcface_jax.data.errors import CorruptSampleError, DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ('alice', 'bob', 'carol')


@pytest.fixture
def faces(tmp_path):
  """3 identities × 3 random 12×12 PNGs, plus an empty folder and a stray text file."""
  rng = np.random.default_rng(0)
  root = tmp_path / 'faces'
  images = {}
  for identity in NAMES:
    (root / identity).mkdir(parents=True)
    for k in range(3):
      image = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
      cv2.imwrite(str(root / identity / f'{k}.png'), image[..., ::-1])  # RGB → BGR on disk
      images[(identity, k)] = image
  (root / 'empty').mkdir()
  (root / 'bob' / 'notes.txt').write_text('not an image')
  return root, images


def _chunk_flags(raw: bytes) -> list[int]:
  flags, offset = [], 0
  while offset < len(raw):
    magic, lrec = struct.unpack_from('<II', raw, offset)
    assert magic == recordio.MAGIC
    flags.append(lrec >> 29)
    length = lrec & ((1 << 29) - 1)
    offset += 8 + length + (-length % 4)
  return flags


def _png_with_magic(image: np.ndarray, payload_offset: int) -> bytes:
  """A valid PNG of `image` with a tEXt chunk holding the magic twice at positions that are
  4-byte aligned once the PNG sits `payload_offset` bytes into a record payload."""
  png = encode_image(image)
  iend = png.rindex(b'IEND') - 4  # the IEND chunk starts with its 4-byte length
  magic = struct.pack('<I', recordio.MAGIC)
  data_start = payload_offset + iend + 8 + len(b'c\0')  # after length, type and 'c\0'
  text = b'c\0' + b'x' * (-data_start % 4) + magic + b'abcd' + magic + b'tail'
  chunk = struct.pack('>I', len(text)) + b'tEXt' + text
  chunk += struct.pack('>I', zlib.crc32(b'tEXt' + text) & 0xFFFFFFFF)
  return png[:iend] + chunk + png[iend:]


@pytest.mark.parametrize('header', [True, False])
def test_pack_read_round_trip_is_exact(faces, tmp_path, header):
  root, images = faces
  out = tmp_path / 'rec'
  result = pack.pack_folder(str(root), str(out), header=header)
  assert (result.num_images, result.num_classes) == (9, 3)
  assert [os.path.basename(p) for p in result.skipped] == ['notes.txt']
  ds = recordio.RecordDataset(str(out))
  assert len(ds) == 9 and ds.num_classes == 3 and ds.has_header == header
  assert ds.image_size == (12, 12)
  np.testing.assert_array_equal(ds.keys, np.arange(1, 10) if header else np.arange(9))
  expected = [images[(name, k)] for name in NAMES for k in range(3)]
  for i in range(9):
    image, label = ds[i]
    assert image.dtype == np.uint8 and image.shape == (12, 12, 3)
    np.testing.assert_array_equal(image, expected[i])  # RGB out, exactly
    assert label == i // 3
  if header:
    np.testing.assert_array_equal(ds.identity_ranges(), [[1, 4], [4, 7], [7, 10]])
    assert np.array_equal(ds.read_record(0)[0], [10, 13])
  else:
    with pytest.raises(ValueError, match='no header'):
      ds.identity_ranges()


def test_jpeg_round_trip_and_labels(tmp_path):
  rng = np.random.default_rng(1)
  smooth = [
    cv2.GaussianBlur(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (9, 9), 3) for _ in range(4)
  ]
  samples = [(k // 2, encode_image(image, '.jpg', quality=98)) for k, image in enumerate(smooth)]
  assert recordio.write_records(str(tmp_path), samples) == 4
  ds = recordio.RecordDataset(str(tmp_path))
  for k, image in enumerate(smooth):
    decoded, label = ds[k]
    assert label == k // 2
    assert np.abs(decoded.astype(int) - image).mean() < 3  # lossy but the same picture, in RGB
  assert ds.raw(3) == (samples[3][1], 1)  # the original bytes, untouched


def test_payload_containing_the_magic_is_split_and_reassembled(tmp_path):
  rng = np.random.default_rng(2)
  image = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
  png = _png_with_magic(image, payload_offset=24)  # a flag-0 payload has a 24-byte header
  magic = struct.pack('<I', recordio.MAGIC)
  aligned = [i for i in range(len(png)) if png.startswith(magic, i) and (24 + i) % 4 == 0]
  assert len(aligned) == 2
  plain = encode_image(image)
  recordio.write_records(str(tmp_path), [(0, plain), (1, png), (1, plain)], header=False)
  # The plain records are one chunk each; the magic-bearing one is first, middle, last.
  assert _chunk_flags((tmp_path / 'train.rec').read_bytes()) == [0, 1, 2, 3, 0]
  ds = recordio.RecordDataset(str(tmp_path))
  assert ds.raw(1) == (png, 1)  # every byte back, the magic re-inserted
  np.testing.assert_array_equal(ds[1][0], image)
  np.testing.assert_array_equal(ds[2][0], image)  # the record after it is still found


def test_multi_label_records_use_the_first_label(tmp_path):
  png = encode_image(np.zeros((4, 4, 3), np.uint8))
  with recordio.RecordWriter(str(tmp_path / 'train.rec'), str(tmp_path / 'train.idx')) as w:
    w.write(0, recordio.pack_payload([2.0, 7.5], png))  # flag 2: labels follow the header
    w.write(1, recordio.pack_payload(0.0, png))
  ds = recordio.RecordDataset(str(tmp_path))  # no property file: class count is scanned
  assert not ds.has_header and len(ds) == 2
  assert ds.num_classes == 3 and ds[0][1] == 2 and ds[1][1] == 0


def test_bad_samples_raise_corrupt_sample_errors(faces, tmp_path):
  root, _ = faces
  out = tmp_path / 'rec'
  pack.pack_folder(str(root), str(out), header=False)
  rec = out / 'train.rec'
  data = bytearray(rec.read_bytes())
  offsets = [int(line.split('\t')[1]) for line in (out / 'train.idx').read_text().splitlines()]
  data[offsets[0] : offsets[0] + 4] = b'\0\0\0\0'  # wrong magic on the first record in the file
  data[offsets[1] : offsets[1] + 4] = b'\0\0\0\0'  # and on record 1
  body = offsets[2] + 8 + 24  # image bytes of record 2: corrupt the PNG signature
  data[body : body + 8] = b'garbage!'
  struct.pack_into('<f', data, offsets[3] + 8 + 4, 7.0)  # record 3: label 7 of 3 classes
  struct.pack_into('<I', data, offsets[4] + 4, (2 << 29) | 100)  # a "middle" chunk alone
  rec.write_bytes(bytes(data))
  ds = recordio.RecordDataset(str(out))  # still opens: other records parse
  for i in (0, 1):
    with pytest.raises(CorruptSampleError, match='wrong magic') as error:
      ds[i]
    assert error.value.key == i
  with pytest.raises(CorruptSampleError, match='decode'):
    ds[2]
  with pytest.raises(CorruptSampleError, match=r'label 7 outside \[0, 3\)'):
    ds[3]
  with pytest.raises(CorruptSampleError, match='out of sequence'):
    ds[4]
  ds[5], ds[6]  # neighbours still read
  rec.write_bytes(bytes(data[: offsets[-1] + 10]))  # truncate the last record
  with pytest.raises(CorruptSampleError, match='truncated'):
    ds[8]
  with pytest.raises(IndexError):
    ds[9]


def test_label_outside_the_property_class_count_is_a_bad_sample(faces, tmp_path):
  root, _ = faces
  out = tmp_path / 'rec'
  pack.pack_folder(str(root), str(out))
  (out / 'property').write_text('2,12,12\n')  # claims 2 classes; carol is label 2
  ds = recordio.RecordDataset(str(out))
  assert ds.num_classes == 2
  ds[5]
  with pytest.raises(CorruptSampleError, match='label 2'):
    ds[8]


def test_unusable_directory_is_one_clear_error(faces, tmp_path):
  with pytest.raises(DatasetError, match='train.rec not found'):
    recordio.RecordDataset(str(tmp_path))
  (tmp_path / 'train.rec').write_bytes(b'')
  with pytest.raises(DatasetError, match='train.idx not found'):
    recordio.RecordDataset(str(tmp_path))
  (tmp_path / 'train.idx').write_text('0\t0\nnot an index\n')
  with pytest.raises(DatasetError, match='train.idx:2'):
    recordio.RecordDataset(str(tmp_path))
  (tmp_path / 'train.idx').write_text('')
  with pytest.raises(DatasetError, match='lists no records'):
    recordio.RecordDataset(str(tmp_path))
  (tmp_path / 'train.idx').write_text('0\t0\n1\t16\n')
  (tmp_path / 'train.rec').write_bytes(b'this is not a RecordIO file at all')
  with pytest.raises(DatasetError, match='is not a RecordIO file'):
    recordio.RecordDataset(str(tmp_path))
  root, _ = faces
  out = tmp_path / 'rec'
  pack.pack_folder(str(root), str(out))
  (out / 'property').write_text('three,12,12')
  with pytest.raises(DatasetError, match='property'):
    recordio.RecordDataset(str(out))
  if os.geteuid() != 0:  # root reads anything
    (out / 'property').unlink()
    os.chmod(out / 'train.rec', 0)
    with pytest.raises(DatasetError, match='cannot be opened'):
      recordio.RecordDataset(str(out))


def _read_all(ds):
  return [(ds[i][0].sum(), ds[i][1]) for i in range(len(ds))]


def test_reads_are_safe_across_threads_pickles_and_processes(faces, tmp_path):
  root, _ = faces
  out = tmp_path / 'rec'
  pack.pack_folder(str(root), str(out))
  ds = recordio.RecordDataset(str(out))
  expected = _read_all(ds)  # the parent's descriptor is open now
  copy = pickle.loads(pickle.dumps(ds))
  assert copy._file._fd is None and _read_all(copy) == expected
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    assert list(pool.map(lambda i: (ds[i % 9][0].sum(), ds[i % 9][1]), range(90))) == expected * 10
  context = multiprocessing.get_context('fork')
  with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
    assert list(pool.map(_read_all, [ds, ds])) == [expected, expected]


def test_pack_command_end_to_end(faces, tmp_path):
  root, images = faces
  for flag, out in (([], tmp_path / 'cmd'), (['--no-header'], tmp_path / 'im2rec')):
    result = subprocess.run(
      [sys.executable, '-m', 'arcface_jax.data.pack', str(root), str(out), *flag],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert 'packed 9 images of 3 identities' in result.stdout
    assert (out / 'property').read_text().strip() == '3,12,12'
    ds = recordio.RecordDataset(str(out))
    assert ds.has_header == (not flag)
    np.testing.assert_array_equal(ds[4][0], images[('bob', 1)])
  bad = subprocess.run(
    [sys.executable, '-m', 'arcface_jax.data.pack', str(tmp_path / 'nope'), str(tmp_path / 'x')],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode == 2 and 'nope' in bad.stderr and 'Traceback' not in bad.stderr


def test_pack_skips_files_that_are_not_images(faces, tmp_path):
  root, _ = faces
  (root / 'alice' / 'fake.jpg').write_bytes(b'<html>not a jpeg</html>')
  (root / 'carol' / 'broken.png').write_bytes(encode_image(np.zeros((12, 12, 3), np.uint8))[:40])
  result = pack.pack_folder(str(root), str(tmp_path / 'a'))
  assert result.num_images == 10  # the broken PNG has a PNG signature: caught only by --check
  assert sorted(os.path.basename(p) for p in result.skipped) == ['fake.jpg', 'notes.txt']
  checked = pack.pack_folder(str(root), str(tmp_path / 'b'), check=True)
  assert checked.num_images == 9 and len(checked.skipped) == 3
