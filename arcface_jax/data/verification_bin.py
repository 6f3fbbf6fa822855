"""Verification `.bin` sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...): a safe reader and a writer.

A `.bin` is a Python pickle of `(bins, issame_list)`: 2N encoded images (JPEG/PNG bytes; pair i is
bins[2i], bins[2i+1]) and N booleans (REFERENCE §3). Loading a pickle can run arbitrary code, so
these files are read with an unpickler that resolves only the few globals such files contain
(numpy's array and scalar reconstruction, byte strings) and refuses anything else before it runs.
Files written by Python 2 hold their images as `str`; they are read with the latin-1 encoding,
which maps each byte to one code point, and turned back into the same bytes.

Make your own set from a pairs list over a folder of aligned face crops:

  python -m arcface_jax.data.verification_bin make --pairs pairs.txt --root DIR --out my.bin
  python -m arcface_jax.data.verification_bin info --bin my.bin

Pairs list: one pair per line, `path1 path2 1|0` (paths relative to --root), or the LFW
`pairs.txt` layout (a header line of one or two integers, then `name i j` for a matched pair and
`name1 i name2 j` for a mismatched one, images at name/name_%04d.jpg).

Every path (the .bin, the pairs list, the image root) may be local or a URI (`gs://...`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import pickle
import sys
from typing import Any, Callable, Sequence, cast

import numpy as np

from arcface_jax import paths
from arcface_jax.data import decode
from arcface_jax.data.errors import CorruptSampleError, DatasetError


class UnsafePickleError(DatasetError):
  """The file asks the unpickler for something a verification set never contains."""


def _latin1_only(text: str, encoding: str = 'utf-8', errors: str = 'strict') -> bytes:
  # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, 'latin1'); only that use is let in.
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1') or errors != 'strict':
    raise UnsafePickleError(f'_codecs.encode called with {encoding!r}, expected latin1')
  return text.encode('latin1')


def _plain_dtype(*args: Any) -> np.dtype:
  dtype = np.dtype(*args)
  if dtype.hasobject:  # object arrays would be the one way to smuggle arbitrary objects in
    raise UnsafePickleError(f'numpy dtype {dtype} holds Python objects')
  return dtype


def _numpy_reconstructors() -> dict[str, Callable[..., Any]]:
  """numpy's own unpickling helpers, found through numpy's public reduce methods."""
  array = np.zeros(1, np.uint8)
  # A reduce value is typed `str | tuple`; numpy's are always (callable, args, ...) tuples.
  return {
    '_reconstruct': cast(Callable[..., Any], array.__reduce_ex__(2)[0]),
    '_frombuffer': cast(Callable[..., Any], array.__reduce_ex__(5)[0]),
    'scalar': cast(Callable[..., Any], np.uint8(0).__reduce__()[0]),
  }


def _allowed_globals() -> dict[tuple[str, str], Any]:
  helpers = _numpy_reconstructors()
  allowed = {
    ('_codecs', 'encode'): _latin1_only,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): _plain_dtype,
  }
  # Protocols 0-2 name the builtins module by its Python 2 name; find_class is given it as is.
  for builtins in ('builtins', '__builtin__'):
    allowed[(builtins, 'bytes')] = bytes
    allowed[(builtins, 'bytearray')] = bytearray
  # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core: both spellings mean the same helper.
  for package in ('numpy.core', 'numpy._core'):
    allowed[(f'{package}.multiarray', '_reconstruct')] = helpers['_reconstruct']
    allowed[(f'{package}.multiarray', 'scalar')] = helpers['scalar']
    allowed[(f'{package}.numeric', '_frombuffer')] = helpers['_frombuffer']
  return allowed


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals a verification set needs; everything else is refused unrun."""

  _ALLOWED = _allowed_globals()

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._ALLOWED[(module, name)]
    except KeyError:
      raise UnsafePickleError(
        f'the pickle asks for {module}.{name}, which a verification set never contains; '
        'refused without running it (the file may be malicious)'
      ) from None


def read_pairs_pickle(path: paths.PathLike) -> tuple[list[bytes], np.ndarray]:
  """(2N encoded images as bytes, issame bool (N,)) from a `.bin` file, safely."""
  path = os.fspath(path)
  if not paths.is_file(path):
    raise FileNotFoundError(f'verification set {path} does not exist')
  data = paths.read_bytes(path)
  try:
    content = _RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()
  except UnsafePickleError as e:
    raise UnsafePickleError(f'{path}: {e}') from None
  except (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    MemoryError,
    OverflowError,
  ) as e:
    raise DatasetError(
      f'{path} is not a readable verification .bin (a pickle of (images, '
      f'issame)); truncated or corrupt? {type(e).__name__}: {e}'
    ) from None
  return _validate(path, content)


def _as_bytes(item: Any) -> bytes | None:
  if isinstance(item, (bytes, bytearray)):
    return bytes(item)
  if isinstance(item, str):  # a Python 2 str read as latin-1: the same bytes back
    return item.encode('latin1')
  if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
    return item.tobytes()
  return None


def _validate(path: str, content: Any) -> tuple[list[bytes], np.ndarray]:
  if not (isinstance(content, (tuple, list)) and len(content) == 2):
    raise DatasetError(f'{path}: expected a pickle of (images, issame), got {type(content)}')
  bins, issame = content
  if not isinstance(bins, (list, tuple)):
    raise DatasetError(f'{path}: the images must be a list of encoded images, got {type(bins)}')
  encoded: list[bytes] = []
  for i, item in enumerate(bins):
    as_bytes = _as_bytes(item)
    if as_bytes is None:
      raise DatasetError(f'{path}: image {i} is a {type(item).__name__}, not bytes')
    encoded.append(as_bytes)
  try:
    labels = np.asarray(issame)
  except Exception as e:  # a ragged or otherwise odd structure
    raise DatasetError(f'{path}: issame is not a list of booleans ({e})') from None
  if labels.ndim != 1 or labels.dtype.kind not in 'biu' or not np.isin(labels, (0, 1)).all():
    raise DatasetError(f'{path}: issame must be N booleans, got {labels.dtype} {labels.shape}')
  if len(encoded) != 2 * len(labels):
    raise DatasetError(
      f'{path}: {len(encoded)} images for {len(labels)} pairs; expected {2 * len(labels)}'
    )
  return encoded, labels.astype(bool)


def decode_image(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray | None:
  """RGB uint8 (H, W, 3) from encoded bytes, resized to size=(H, W); None if undecodable."""
  try:
    rgb = decode.decode_image(data)
  except CorruptSampleError:
    return None
  return rgb if size is None else decode.resize(rgb, size)


def load_bin(
  path: paths.PathLike, image_size: int | tuple[int, int] = (112, 112)
) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (2N, H, W, 3) RGB, issame bool (N,)); images resized to image_size (H, W)."""
  size = (image_size, image_size) if isinstance(image_size, int) else (image_size[0], image_size[1])
  encoded, issame = read_pairs_pickle(path)
  images = np.empty((len(encoded), size[0], size[1], 3), np.uint8)

  def decode_into(index: int) -> bool:
    image = decode_image(encoded[index], size)
    if image is None:
      return False
    images[index] = image
    return True

  # OpenCV releases the GIL while decoding, so threads decode in parallel.
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    ok = list(pool.map(decode_into, range(len(encoded))))
  if not all(ok):
    raise DatasetError(
      f'{path}: image {ok.index(False)} (pair {ok.index(False) // 2}) cannot be decoded as JPEG/PNG'
    )
  return images, issame


def write_bin(
  path: paths.PathLike, encoded_images: Sequence[bytes], issame: Sequence[bool]
) -> None:
  """Writes a `.bin` readable by this module and by the reference tools (atomically)."""
  issame = [bool(s) for s in issame]
  if len(encoded_images) != 2 * len(issame):
    raise ValueError(f'{len(encoded_images)} images for {len(issame)} pairs')
  content = ([bytes(b) for b in encoded_images], issame)
  paths.write_bytes_atomic(path, pickle.dumps(content, protocol=4))


def _is_int(token: str) -> bool:
  return token.lstrip('-').isdigit()


def _label(token: str, where: str) -> bool:
  value = token.lower()
  if value in ('1', 'true', 'same'):
    return True
  if value in ('0', 'false', '-1', 'diff'):
    return False
  raise DatasetError(f'{where}: label {token!r} is not 1 or 0')


def parse_pairs(
  pairs_path: paths.PathLike, root: paths.PathLike, lfw_ext: str = '.jpg'
) -> list[tuple[str, str, bool]]:
  """[(image path 1, image path 2, issame)] from a pairs list (see the module docstring)."""
  if not paths.is_file(pairs_path):
    raise FileNotFoundError(f'pairs list {pairs_path} does not exist')
  text = paths.read_text(pairs_path)
  lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1)]
  lines = [(n, t) for n, t in lines if t and not t[0].startswith('#')]
  if not lines:
    raise DatasetError(f'{pairs_path} lists no pairs')
  # LFW's pairs.txt starts with "folds pairs-per-fold" (or one count); a generic list never does.
  lfw = len(lines[0][1]) <= 2 and all(_is_int(t) for t in lines[0][1])
  if lfw:
    lines = lines[1:]
  lfw_path = lambda name, i: paths.join(root, name, f'{name}_{int(i):04d}{lfw_ext}')
  pairs = []
  for n, tokens in lines:
    where = f'{pairs_path}:{n}'
    if lfw and len(tokens) == 3 and _is_int(tokens[1]) and _is_int(tokens[2]):
      pairs.append((lfw_path(tokens[0], tokens[1]), lfw_path(tokens[0], tokens[2]), True))
    elif lfw and len(tokens) == 4 and _is_int(tokens[1]) and _is_int(tokens[3]):
      pairs.append((lfw_path(tokens[0], tokens[1]), lfw_path(tokens[2], tokens[3]), False))
    elif not lfw and len(tokens) == 3:
      pairs.append(
        (paths.join(root, tokens[0]), paths.join(root, tokens[1]), _label(tokens[2], where))
      )
    else:
      layout = 'LFW: "name i j" or "name1 i name2 j"' if lfw else '"path1 path2 1|0"'
      raise DatasetError(f'{where}: expected {layout}, got {" ".join(tokens)!r}')
  return pairs


def make_bin(
  pairs_path: paths.PathLike, root: paths.PathLike, out_path: paths.PathLike, lfw_ext: str = '.jpg'
) -> int:
  """Writes a `.bin` of the listed pairs with each image's original bytes; returns N pairs."""
  pairs = parse_pairs(pairs_path, root, lfw_ext)
  cache: dict[str, bytes] = {}
  encoded = []
  for first, second, _ in pairs:
    for image_path in (first, second):
      if image_path not in cache:
        if not paths.is_file(image_path):
          raise FileNotFoundError(f'{pairs_path} lists {image_path}, which does not exist')
        data = paths.read_bytes(image_path)
        if decode_image(data) is None:  # refuse now rather than when the set is first evaluated
          raise DatasetError(f'{image_path} cannot be decoded as an image')
        cache[image_path] = data
      encoded.append(cache[image_path])
  write_bin(out_path, encoded, [same for _, _, same in pairs])
  return len(pairs)


def main(argv: Sequence[str] | None = None) -> None:
  # argparse rather than absl flags: this module is imported by the trainer, and module-level
  # absl flags would claim names (--out, --root) for every program that imports it.
  parser = argparse.ArgumentParser(
    prog='python -m arcface_jax.data.verification_bin',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  commands = parser.add_subparsers(dest='command', required=True)
  make = commands.add_parser('make', help='write a .bin from a pairs list over a folder')
  make.add_argument(
    '--pairs',
    required=True,
    help='pairs list: "path1 path2 1|0" lines, or the LFW pairs.txt layout',
  )
  make.add_argument('--root', default='.', help='folder the listed image paths are relative to')
  make.add_argument('--out', required=True, help='the .bin file to write')
  make.add_argument('--lfw_ext', default='.jpg', help='image extension for the LFW layout')
  info = commands.add_parser('info', help='load a .bin and describe it')
  info.add_argument('--bin', required=True)
  args = parser.parse_args(argv)
  try:
    if args.command == 'make':
      count = make_bin(args.pairs, args.root, args.out, args.lfw_ext)
      print(f'{args.out}: {count} pairs')
    else:
      images, issame = load_bin(args.bin, image_size=(112, 112))
      print(
        f'{args.bin}: {len(issame)} pairs ({int(issame.sum())} matched), '
        f'{len(images)} images decoded at 112x112'
      )
  except (DatasetError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  main()
