"""Packs a folder-per-identity tree into MS1M-style RecordIO (train.rec, train.idx, property).

  python -m arcface_jax.data.pack IMAGE_DIR OUT_DIR [--no-header] [--check]

Identities are the sub-folders, labelled 0.. in sorted name order (empty ones get no label);
images keep their original encoded bytes (no re-encoding loss). The default layout has the header
record and per-identity ranges that MS1M/Glint360K files have; --no-header writes im2rec-style
files (every key an image). Files whose first bytes are not JPEG/PNG/BMP are skipped and counted;
--check also decodes every image (slower) and skips those that fail. Either directory may be a
URI (`gs://bucket/faces`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Iterator, Sequence

from absl import app, logging
from absl.flags import argparse_flags

from arcface_jax import paths as uri_paths
from arcface_jax.data import recordio
from arcface_jax.data.decode import decode_image, looks_like_image
from arcface_jax.data.errors import CorruptSampleError, DatasetError
from arcface_jax.data.folder import IMAGE_EXTENSIONS, list_identities, scan_identities

__all__ = ['IMAGE_EXTENSIONS', 'list_identities', 'pack_folder', 'PackResult']


@dataclasses.dataclass(frozen=True)
class PackResult:
  """What `pack_folder` wrote and passed over."""

  num_images: int
  num_classes: int
  skipped: list[str]  # non-image entries and files that failed the checks


def pack_folder(
  image_dir: uri_paths.PathLike,
  out_dir: uri_paths.PathLike,
  *,
  header: bool = True,
  check: bool = False,
) -> PackResult:
  """Writes out_dir/train.rec, train.idx and property; DatasetError if nothing can be packed."""
  scan = scan_identities(image_dir)
  skipped = list(scan.skipped_files)

  def samples() -> Iterator[tuple[int, bytes]]:
    yielded = False
    for label, (_, paths) in enumerate(scan.identities):
      for path in paths:
        try:
          data = uri_paths.read_bytes(path)
          if not looks_like_image(data[:16]):
            raise CorruptSampleError(path, 'not a JPEG, PNG or BMP file')
          if check or not yielded:  # the first image also sets the size in `property`
            decode_image(data, path)
        except (OSError, CorruptSampleError) as e:
          logging.warning('skipping %s: %s', path, getattr(e, 'reason', e))
          skipped.append(path)
          continue
        yielded = True
        yield label, data

  try:
    count = recordio.write_records(
      out_dir, samples(), header=header, num_classes=len(scan.identities)
    )
  except ValueError as e:  # e.g. every file was skipped
    raise DatasetError(f'{image_dir}: {e}') from None
  return PackResult(count, len(scan.identities), skipped)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse_flags.ArgumentParser(
    prog='python -m arcface_jax.data.pack',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('image_dir')
  parser.add_argument('out_dir')
  parser.add_argument(
    '--no-header',
    '--no_header',
    dest='no_header',
    action='store_true',
    help='write im2rec-style files without the header and identity records',
  )
  parser.add_argument(
    '--check', action='store_true', help='decode every image and skip those that fail (slower)'
  )
  return parser.parse_args(argv[1:])


def main(args: argparse.Namespace) -> None:
  try:
    result = pack_folder(args.image_dir, args.out_dir, header=not args.no_header, check=args.check)
  except DatasetError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(
    f'packed {result.num_images} images of {result.num_classes} identities into {args.out_dir}'
    + (f' (skipped {len(result.skipped)} non-image files)' if result.skipped else '')
  )


if __name__ == '__main__':
  app.run(main, flags_parser=_parse)
