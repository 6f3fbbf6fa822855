"""Faces speed (issue #15): detect + align + embed on 640×480 photos with one face, per second.

  .venv/bin/python benchmarks/faces.py [--photos 8] [--runs 5] [--model mobilefacenet]

1. Ours (arcface_jax.faces.mtcnn.MTCNN) against the reference detector, facenet-pytorch 2.6.0's
   MTCNN on torch CPU (the compare extra; its torchvision NMS replaced by the vectorised NumPy
   stand-in of tests/reference_mtcnn.py), each followed by the same alignment
   (arcface_jax.data.align.align_face) and the same jitted embedder (random init). Photos: the
   public-domain astronaut portrait at several sizes and places on 640×480 backgrounds. Runs are
   interleaved; photos/s are medians over runs, after one warm-up pass each.
2. First photo: a fresh process (`--first-photo`) imports everything, loads the detector and the
   embedder's weights (written to a file first, as a trained model would be), decodes one photo
   file and answers it, timed from its start; once with an empty persistent
   compilation cache (cold) and once more with the cache that run filled (warm).
3. First photo as a user runs it: the same embedder exported (`arcface_jax.export`, with a model
   info declaring photo input), and the command `python -m arcface_jax.faces verify --model
   X.jax_export photo.png photo.png --threshold 0.5 --json` in a fresh process, cold then warm
   (median of 5): the time until its answer is printed (stdout unbuffered, as at a terminal),
   until the process has exited (JAX's teardown follows the answer), and its CPU time (user +
   system, all threads).

Ends with `RESULT faces_vs_reference=<ours/reference photos/s> first_photo_warm_s=<s>
first_photo_cli_warm_s=<s> first_photo_cli_warm_cpu_s=<s>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

_START = time.perf_counter()
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def photos(count: int) -> list[np.ndarray]:
  """640×480 photos of one face: the astronaut portrait scaled and placed differently."""
  import skimage.data  # pylint: disable=import-outside-toplevel

  portrait, background = skimage.data.astronaut(), skimage.data.coffee()
  rng = np.random.default_rng(0)
  out = []
  for k in range(count):
    canvas = cv2.resize(background, (640, 480), interpolation=cv2.INTER_AREA)
    side = int(rng.integers(240, 481))
    top, left = int(rng.integers(0, 480 - side + 1)), int(rng.integers(0, 640 - side + 1))
    face = cv2.resize(
      portrait[:, ::-1] if k % 2 else portrait, (side, side), interpolation=cv2.INTER_AREA
    )
    canvas[top : top + side, left : left + side] = face
    out.append(canvas)
  return out


def embedder_variables(name: str) -> dict:
  """Random-init variables of backbone `name` (the same for both pipelines)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from arcface_jax import models  # pylint: disable=import-outside-toplevel

  model = models.get(name)
  return jax.jit(lambda key: model.init(key, jnp.zeros((1, 112, 112, 3)), train=False))(
    jax.random.PRNGKey(0)
  )


def make_embedder(name: str, variables: dict):
  """A jitted embedder of 112×112 uint8 crops, L2-normalised."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from arcface_jax import models  # pylint: disable=import-outside-toplevel

  model = models.get(name)

  @jax.jit
  def embed(crops):
    x = (crops.astype(jnp.float32) - 127.5) / 128.0
    e = model.apply(variables, x, train=False)
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

  return lambda crops: np.asarray(embed(crops))


def pipeline(detect, embed):
  """detect(photo) -> landmarks (N, 5, 2) of faces; returns photo -> embeddings (N, D)."""
  from arcface_jax.data.align import align_face  # pylint: disable=import-outside-toplevel

  def run(photo: np.ndarray) -> np.ndarray:
    landmarks = detect(photo)
    if not len(landmarks):
      return np.zeros((0, 512), np.float32)
    return embed(np.stack([align_face(photo, points) for points in landmarks[:1]]))

  return run


def ours_detect():
  from arcface_jax.faces.mtcnn import MTCNN  # pylint: disable=import-outside-toplevel

  detector = MTCNN()
  return lambda photo: [face.landmarks for face in detector.detect(photo)]


def reference_detect():
  sys.path.insert(0, os.path.join(_ROOT, 'tests'))
  import reference_mtcnn  # pylint: disable=import-outside-toplevel

  reference = reference_mtcnn.ReferenceMTCNN()
  return lambda photo: reference.detect(photo)[2]


def first_photo(model: str, variables_file: str, photo_file: str) -> None:
  """In a fresh process, as a user's would: imports, the detector, a trained embedder's weights
  read from a file, one photo file decoded, detected, aligned and embedded."""
  import flax.serialization  # pylint: disable=import-outside-toplevel

  from arcface_jax.faces import compilation  # pylint: disable=import-outside-toplevel

  compilation.enable_persistent_cache()
  detect = ours_detect()
  with open(variables_file, 'rb') as f:
    variables = flax.serialization.msgpack_restore(f.read())
  run = pipeline(detect, make_embedder(model, variables))
  bgr = cv2.imread(photo_file)
  assert bgr is not None, f'{photo_file}: written by main() as PNG, yet does not read back'
  photo = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
  assert run(photo).shape[0] == 1
  print(f'FIRST_PHOTO_S {time.perf_counter() - _START:.3f} {time.process_time():.3f}', flush=True)


def time_first_photo(model: str, work_dir: str) -> float:
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
  env['ARCFACE_JAX_CACHE_DIR'] = os.path.join(work_dir, 'cache')
  start = time.perf_counter()
  result = subprocess.run(
    [
      sys.executable,
      os.path.abspath(__file__),
      '--first-photo',
      '--model',
      model,
      '--variables',
      os.path.join(work_dir, 'model.msgpack'),
      '--photo',
      os.path.join(work_dir, 'photo.png'),
    ],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  wall = time.perf_counter() - start
  inside, cpu = [
    (float(line.split()[1]), float(line.split()[2]))
    for line in result.stdout.splitlines()
    if line.startswith('FIRST_PHOTO_S')
  ][0]
  print(
    f'  process wall {wall:.2f} s; from its start to the first embedding {inside:.2f} s, '
    f'{cpu:.2f} CPU s (all threads)'
  )
  return wall


def export_embedder(name: str, variables: dict, path: str) -> None:
  """`variables` of backbone `name` as an exported model of detected, aligned 112×112 faces."""
  from arcface_jax import export, model_info, models  # pylint: disable=import-outside-toplevel

  info = model_info.ModelInfo(
    model_name=name,
    embedding_dim=512,
    image_size=112,
    mean=127.5,
    std=128.0,
    fingerprint=model_info.fingerprint(variables),
  )
  export.save(path, models.get(name), variables, 112, platforms=('cpu',), info=info)


def time_cli_first_photo(work_dir: str) -> tuple[float, float, float]:
  """(answer, exit, CPU) seconds of `faces verify` on one photo in a fresh process: until its
  answer is printed (stdout unbuffered, as at a terminal), until the process has exited (JAX's
  teardown after the answer), and its CPU time."""
  import resource  # pylint: disable=import-outside-toplevel

  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
  env['ARCFACE_JAX_CACHE_DIR'] = os.path.join(work_dir, 'cli_cache')
  env['PYTHONUNBUFFERED'] = '1'  # the answer reaches the pipe when printed, as on a terminal
  photo = os.path.join(work_dir, 'photo.png')
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  process = subprocess.Popen(
    [sys.executable, '-m', 'arcface_jax.faces', 'verify', '--model',
     os.path.join(work_dir, 'model.jax_export'), photo, photo, '--threshold', '0.5', '--json'],
    env=env, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
  )  # fmt: skip
  assert process.stdout is not None
  answer, answered = '', None
  for line in process.stdout:  # the JSON object ends with a line holding only '}'
    answer += line
    if line.rstrip() == '}':
      answered = time.perf_counter() - start
  code = process.wait()  # reaped before reading the children's CPU time, which counts it then
  exited = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  assert code == 0 and answered is not None and '"same": true' in answer, answer
  print(
    f'  faces verify: answer after {answered:.2f} s, exited after {exited:.2f} s, CPU {cpu:.2f} s'
  )
  return answered, exited, cpu


def jax_to_numpy(tree):
  import jax  # pylint: disable=import-outside-toplevel

  return jax.tree.map(np.asarray, tree)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--photos', type=int, default=8)
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--model', default='mobilefacenet')
  parser.add_argument('--first-photo', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--variables', help=argparse.SUPPRESS)
  parser.add_argument('--photo', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.first_photo:
    first_photo(args.model, args.variables, args.photo)
    return
  import flax.serialization  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  variables = embedder_variables(args.model)
  embed = make_embedder(args.model, variables)
  pipelines = {
    'ours': pipeline(ours_detect(), embed),
    'reference': pipeline(reference_detect(), embed),
  }
  images = photos(args.photos)
  for run in pipelines.values():  # warm-up: compiles, caches
    for image in images:
      run(image)
  rates: dict[str, list[float]] = {name: [] for name in pipelines}
  for _ in range(args.runs):
    for name, run in pipelines.items():
      start = time.perf_counter()
      for image in images:
        run(image)
      rates[name].append(len(images) / (time.perf_counter() - start))
  medians = {name: statistics.median(r) for name, r in rates.items()}
  for name, r in rates.items():
    print(f'{name:>9}: {medians[name]:.2f} photos/s (runs: {", ".join(f"{x:.2f}" for x in r)})')
  ratio = medians['ours'] / medians['reference']
  print(
    f'ratio ours / reference: {ratio:.2f} ({args.model} embedder, random init; '
    f'torch {torch.__version__} with {torch.get_num_threads()} threads)'
  )
  with tempfile.TemporaryDirectory(prefix='arcface_jax_bench_') as work_dir:
    with open(os.path.join(work_dir, 'model.msgpack'), 'wb') as f:
      f.write(flax.serialization.msgpack_serialize(jax_to_numpy(variables)))
    cv2.imwrite(os.path.join(work_dir, 'photo.png'), cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))
    print('first photo, fresh process, empty compilation cache:')
    cold = time_first_photo(args.model, work_dir)
    print('first photo, fresh process, warm compilation cache:')
    warm = time_first_photo(args.model, work_dir)
    export_embedder(args.model, jax_to_numpy(variables), os.path.join(work_dir, 'model.jax_export'))
    print('faces verify on an exported model, empty compilation cache:')
    cli_cold = time_cli_first_photo(work_dir)[0]
    print('faces verify on an exported model, warm compilation cache (5 runs):')
    cli_runs = [time_cli_first_photo(work_dir) for _ in range(5)]
  cli_warm, cli_exit, cli_cpu = (statistics.median(run[k] for run in cli_runs) for k in range(3))
  print(f'first photo: cold {cold:.2f} s, warm {warm:.2f} s')
  print(
    f'faces verify: answer cold {cli_cold:.2f} s, warm {cli_warm:.2f} s (exit {cli_exit:.2f} s, '
    f'CPU {cli_cpu:.2f} s)'
  )
  print(
    f'RESULT faces_vs_reference={ratio:.2f} first_photo_warm_s={warm:.2f} '
    f'first_photo_cli_warm_s={cli_warm:.2f} first_photo_cli_warm_exit_s={cli_exit:.2f} '
    f'first_photo_cli_warm_cpu_s={cli_cpu:.2f}'
  )


if __name__ == '__main__':
  main()
