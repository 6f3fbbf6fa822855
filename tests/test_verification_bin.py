"""`.bin` verification sets: exact round trips, refusal of malicious pickles, Python 2 files."""

import os
import pickle
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from arcface_jax.data import verification_bin
from arcface_jax.data.errors import DatasetError


def _png(rgb):
  ok, data = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  assert ok
  return data.tobytes()


def _random_images(n, size=(112, 112), seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n,) + size + (3,), dtype=np.uint8)


def test_written_bin_reads_back_exactly_in_rgb(tmp_path):
  images = _random_images(6)
  images[0] = 0
  images[0, ..., 0] = 255  # pure red in RGB: a BGR/RGB swap would make it blue
  issame = [True, False, True]
  path = str(tmp_path / 'set.bin')
  verification_bin.write_bin(path, [_png(im) for im in images], issame)
  loaded, labels = verification_bin.load_bin(path)
  assert loaded.dtype == np.uint8 and loaded.shape == (6, 112, 112, 3)
  np.testing.assert_array_equal(loaded, images)
  np.testing.assert_array_equal(labels, issame)
  assert labels.dtype == bool


def test_other_sizes_are_resized(tmp_path):
  path = str(tmp_path / 'small.bin')
  flat = np.full((56, 40, 3), (10, 200, 30), np.uint8)  # uniform colour survives any resize
  verification_bin.write_bin(path, [_png(flat)] * 2, [True])
  loaded, _ = verification_bin.load_bin(path, image_size=(112, 96))
  assert loaded.shape == (2, 112, 96, 3)
  np.testing.assert_array_equal(loaded[0, 50, 50], (10, 200, 30))


def test_numpy_issame_and_bytearrays_are_accepted(tmp_path):
  images = _random_images(4, (8, 8))
  path = str(tmp_path / 'np.bin')
  for protocol in (2, 5):  # protocol 2 spells bytes and arrays with reduce calls
    with open(path, 'wb') as f:
      pickle.dump(
        ([bytearray(_png(im)) for im in images], np.array([True, False])), f, protocol=protocol
      )
    loaded, labels = verification_bin.load_bin(path, image_size=8)
    np.testing.assert_array_equal(loaded, images)
    np.testing.assert_array_equal(labels, [True, False])
  # numpy bool scalars in a plain list, as `list(np_array)` leaves them.
  with open(path, 'wb') as f:
    pickle.dump(([_png(im) for im in images], [np.bool_(False), np.bool_(True)]), f, protocol=2)
  np.testing.assert_array_equal(verification_bin.load_bin(path, image_size=8)[1], [False, True])


class _RunsCommand:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


class _WritesFile:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


@pytest.mark.parametrize('payload', ['system', 'open', 'nested'])
def test_malicious_pickles_are_refused_without_running(tmp_path, payload):
  marker = tmp_path / 'pwned'
  evil = {
    'system': _RunsCommand(f'touch {marker}'),
    'open': _WritesFile(str(marker)),
    'nested': _RunsCommand(f'touch {marker}'),
  }[payload]
  content = evil if payload != 'nested' else ([b'x', evil], [True])
  path = tmp_path / 'evil.bin'
  path.write_bytes(pickle.dumps(content, protocol=2))
  with pytest.raises(verification_bin.UnsafePickleError, match='refused') as info:
    verification_bin.load_bin(str(path))
  assert str(path) in str(info.value)
  assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
  path = tmp_path / 'objects.bin'
  path.write_bytes(pickle.dumps(([b'a', b'b'], np.array([True], dtype=object)), protocol=2))
  with pytest.raises(verification_bin.UnsafePickleError, match='objects'):
    verification_bin.load_bin(str(path))


def _py2_pickle(payloads, issame):
  """Protocol-2 bytes as Python 2 writes them: images as `str` (BINSTRING), a numpy bool array
  for issame with the numpy.core module name and str dtype fields."""
  string = lambda s: b'T' + struct.pack('<i', len(s)) + s
  out = [b'\x80\x02(]q\x00(']  # PROTO 2, MARK, EMPTY_LIST, MARK
  out += [string(p) for p in payloads]
  out.append(b'e')  # APPENDS
  raw = bytes(bool(s) for s in issame)
  out.append(
    b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85'
    + string(b'b')
    + b'\x87R(K\x01K'
    + bytes([len(issame)])
    + b'\x85'
    + b'cnumpy\ndtype\n'
    + string(b'b1')
    + b'K\x00K\x01\x87R'
    + b'(K\x03'
    + string(b'|')
    + b'NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb'
    + b'\x89'
    + string(raw)
    + b'tb'
  )
  out.append(b't.')  # TUPLE (from the first MARK), STOP
  return b''.join(out)


def test_python2_pickles_load(tmp_path):
  images = _random_images(4, (16, 16), seed=2)
  path = tmp_path / 'py2.bin'
  path.write_bytes(_py2_pickle([_png(im) for im in images], [False, True]))
  # The default ASCII decoding cannot read it: this is the case `encoding='bytes'` exists for.
  with pytest.raises(UnicodeDecodeError):
    pickle.loads(path.read_bytes())
  loaded, labels = verification_bin.load_bin(str(path), image_size=16)
  np.testing.assert_array_equal(loaded, images)
  np.testing.assert_array_equal(labels, [False, True])


def test_missing_truncated_and_foreign_files_name_the_file(tmp_path):
  missing = str(tmp_path / 'nope.bin')
  with pytest.raises(FileNotFoundError, match='nope.bin'):
    verification_bin.load_bin(missing)
  good = tmp_path / 'good.bin'
  verification_bin.write_bin(str(good), [_png(im) for im in _random_images(2, (8, 8))], [True])
  truncated = tmp_path / 'truncated.bin'
  truncated.write_bytes(good.read_bytes()[:-40])
  with pytest.raises(DatasetError, match='truncated.bin'):
    verification_bin.load_bin(str(truncated))
  text = tmp_path / 'text.bin'
  text.write_text('not a pickle at all\n')
  with pytest.raises(DatasetError, match='text.bin'):
    verification_bin.load_bin(str(text))
  odd = tmp_path / 'odd.bin'
  odd.write_bytes(pickle.dumps(([b'a', b'b', b'c'], [True])))
  with pytest.raises(DatasetError, match='3 images for 1 pairs'):
    verification_bin.load_bin(str(odd))
  garbage = tmp_path / 'garbage.bin'
  garbage.write_bytes(pickle.dumps(([b'not an image', b'x'], [True])))
  with pytest.raises(DatasetError, match='garbage.bin: image 0'):
    verification_bin.load_bin(str(garbage))


def _write_image(path, rgb):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_make_from_a_generic_pairs_list(tmp_path):
  images = _random_images(3, (20, 20), seed=4)
  for i, im in enumerate(images):
    _write_image(str(tmp_path / 'faces' / f'{i}.png'), im)
  pairs = tmp_path / 'pairs.txt'
  pairs.write_text('# comment\n0.png 1.png 1\n1.png 2.png 0\n\n2.png 0.png true\n')
  out = tmp_path / 'mine.bin'
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'arcface_jax.data.verification_bin',
      'make',
      '--pairs',
      str(pairs),
      '--root',
      str(tmp_path / 'faces'),
      '--out',
      str(out),
    ],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr
  assert '3 pairs' in result.stdout
  loaded, issame = verification_bin.load_bin(str(out), image_size=20)
  np.testing.assert_array_equal(loaded, images[[0, 1, 1, 2, 2, 0]])
  np.testing.assert_array_equal(issame, [True, False, True])


def test_lfw_pairs_layout(tmp_path):
  root = tmp_path / 'lfw'
  images = _random_images(3, (10, 10), seed=5)
  names = [('Ann_Lee', 1), ('Ann_Lee', 3), ('Bo_Li', 2)]
  for (name, i), im in zip(names, images):
    _write_image(str(root / name / f'{name}_{i:04d}.png'), im)
  pairs = tmp_path / 'pairs.txt'
  pairs.write_text('1\t2\nAnn_Lee\t1\t3\nAnn_Lee\t3\tBo_Li\t2\n')
  out = str(tmp_path / 'lfw.bin')
  assert verification_bin.make_bin(str(pairs), str(root), out, lfw_ext='.png') == 2
  loaded, issame = verification_bin.load_bin(out, image_size=10)
  np.testing.assert_array_equal(loaded, images[[0, 1, 1, 2]])
  np.testing.assert_array_equal(issame, [True, False])


def test_make_refuses_bad_lists_and_missing_images(tmp_path):
  pairs = tmp_path / 'pairs.txt'
  pairs.write_text('a.png b.png maybe\n')
  with pytest.raises(DatasetError, match='pairs.txt:1'):
    verification_bin.make_bin(str(pairs), str(tmp_path), str(tmp_path / 'x.bin'))
  pairs.write_text('a.png b.png 1\n')
  with pytest.raises(FileNotFoundError, match='a.png'):
    verification_bin.make_bin(str(pairs), str(tmp_path), str(tmp_path / 'x.bin'))
  assert not (tmp_path / 'x.bin').exists()
