"""The Gradio page: a model dropdown, an "aligned input" switch, and the Identify, Verify, Enrol
and Gallery tabs, each a thin layer over `app.service` (what to do) and `app.views` (what to draw).

Every handler answers in its tab's status line: a `PageProblem` becomes a message saying what is
wrong, and an unexpected error becomes "internal error: ..." with the traceback in the server's
log; the server keeps serving either way (Gradio's bare "Error" badge never shows). Photo uploads
reach the handlers undecoded (`PhotoInput`), so a file that is not an image gets the same kind
of message instead of failing inside Gradio. Element ids (`#identify-photo`, ...) are what the
browser test drives.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Sequence

# Gradio reports usage and checks for new versions over the network unless told not to.
os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
import gradio as gr  # noqa: E402 (after the setting above)
import numpy as np
import pandas as pd

from arcface_jax.app import views
from arcface_jax.app.service import PageProblem, PageService

log = logging.getLogger('arcface_jax.app')
PEOPLE_COLUMNS = ['name', 'photos enrolled']
ALIGNED_LABEL = 'aligned input: each photo is one aligned face crop (no face detection)'
# Small crops (the embedded demo's are 32 pixels) are shown enlarged with crisp pixels.
CSS = '.photo img { image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%; }'
INTRO = """# Who is in this photo?
Face recognition with an ArcFace-trained embedder (`arcface_jax`). **Identify** names every face
of a photo from the gallery, or answers *unknown*; **Verify** says whether two photos show one
person; **Enrol** adds people to the gallery; **Gallery** lists them and maps their embeddings."""


@dataclasses.dataclass
class Examples:
  """Sample uploads shown under the tabs (the embedded demo has some; real models have none)."""

  identify: list[str] = dataclasses.field(default_factory=list)
  verify: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  enrol: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)
  note: str = ''


class PhotoInput(gr.Image):
  """An image upload handed to the handler as the uploaded file's path, undecoded.

  No `__init__` of its own: Gradio sends the front end the arguments of `gr.Image.__init__`.
  """

  is_template = True  # drawn by the front end's Image component

  def preprocess(self, payload: Any) -> str | None:
    return None if payload is None else payload.path


def _problem(message: str) -> str:
  return f'⚠️ **{message}**'


def _crashed(what: str, error: Exception) -> str:
  """A bug, not bad input: the traceback goes to the server's log, a line to the page."""
  log.exception('%s failed', what)
  return _problem(
    f'Internal error ({type(error).__name__}: {error}); the server log has the details.'
  )


Handler = Callable[..., tuple]


def _guarded(empty: Callable[[str], tuple]) -> Callable[[Handler], Handler]:
  """Runs a handler; a problem or a crash gives `empty(status message)` instead."""

  def wrap(handler: Handler) -> Handler:
    def run(*args: Any) -> tuple:
      try:
        return handler(*args)
      except PageProblem as e:
        return empty(_problem(str(e)))
      except Exception as e:  # keep serving
        return empty(_crashed(handler.__name__, e))

    run.__name__ = handler.__name__
    return run

  return wrap


def _table(rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> pd.DataFrame:
  return pd.DataFrame(list(rows), columns=list(columns))


def build_page(service: PageService, examples: Examples | None = None) -> gr.Blocks:
  """The page over `service`; launch it with `launch` (loopback only by default)."""
  examples = examples or Examples()
  no_identify = lambda message: (
    None,
    _table([], views.IDENTIFY_COLUMNS),
    message,
    gr.update(),
    gr.update(),
  )
  no_verify = lambda message: (None, message, gr.update(), gr.update())
  no_people = lambda message: (_table([], PEOPLE_COLUMNS), None, message)

  def identify_upload(label, photo, aligned, calibrated, value):
    if photo is None:  # the photo was removed: clear the answer
      return None, _table([], views.IDENTIFY_COLUMNS), '', gr.update(), gr.update()
    return identify(label, photo, aligned, calibrated, value)

  @_guarded(no_identify)
  def identify(label, photo, aligned, calibrated, value):
    result = service.identify(
      label, photo, aligned=aligned, threshold=None if calibrated else value
    )
    named = [a.name for a in result.answers if a.name != 'unknown']
    unknown = len(result.answers) - len(named)
    summary = f'**{len(result.answers)} face(s)**: ' + ', '.join(
      named + ([f'{unknown} unknown'] if unknown else [])
    )
    status = f'{summary}. Using {views.describe_threshold(result.threshold)}.'
    return (
      views.draw_identifications(result.photo, result.answers),
      _table(views.identify_rows(result.answers), views.IDENTIFY_COLUMNS),
      status,
      round(result.threshold.value, 4),
      calibrated,
    )

  def identify_at_threshold(label, photo, aligned, value):
    return identify(label, photo, aligned, False, value)

  @_guarded(no_verify)
  def verify(label, photo_a, photo_b, aligned, calibrated, value):
    answer = service.verify(
      label, photo_a, photo_b, aligned=aligned, threshold=None if calibrated else value
    )
    verdict = 'Same person' if answer.same else 'Different people'
    relation = '>' if answer.same else '≤'
    status = (
      f'## {verdict}\nscore (cosine) **{answer.score:.3f}** {relation} '
      f'{views.describe_threshold(answer.threshold)}.'
    )
    crops = np.concatenate([face.crop for face in answer.faces], axis=1)
    return (
      views.draw_identifications(crops, []),
      status,
      round(answer.threshold.value, 4),
      calibrated,
    )

  def verify_at_threshold(label, photo_a, photo_b, aligned, value):
    return verify(label, photo_a, photo_b, aligned, False, value)

  @_guarded(no_people)
  def people(label):
    gallery, rows = service.people(label)
    if gallery is None:
      return (
        _table([], PEOPLE_COLUMNS),
        None,
        f'Nobody enrolled yet: the gallery {service.gallery_path(label)} is created at '
        'the first enrolment (Enrol tab).',
      )
    threshold = (
      f'; "unknown" {views.describe_threshold(gallery.threshold)}'
      if gallery.threshold is not None
      else ''
    )
    status = f'{len(rows)} people, {len(gallery.labels)} photos in `{gallery.path}`{threshold}.'
    return _table(rows, PEOPLE_COLUMNS), views.embedding_map(gallery), status

  def enrol(label, name, photos, is_aligned):
    try:
      result = service.enrol(label, name, photos, aligned=is_aligned)
    except PageProblem as e:
      return (_problem(str(e)),) + people(label)
    except Exception as e:  # keep serving
      return (_crashed('enrol', e),) + people(label)
    status = (
      f'Enrolled **{result.name}** from {result.added} photo(s); saved to '
      f'`{result.gallery.path}` ({len(result.gallery.names)} people).'
    )
    if result.skipped:
      status += ' Skipped: ' + '; '.join(f'{n} ({why})' for n, why in result.skipped) + '.'
    return (status,) + people(label)

  def pick_model(label):
    try:
      recognizer = service.recognizer(label)
    except PageProblem as e:
      return (gr.update(), _problem(str(e))) + no_people('')
    info = recognizer.info
    detect = info.detect_faces
    status = (
      f'**{label}**: {info.model_name}, {info.image_size}×{info.image_size} input, '
      f'{info.embedding_dim}-d embeddings, fingerprint `{info.fingerprint}`. '
      + (
        'Photos go through face detection and alignment.'
        if detect
        else 'Trained on crops that are not photos of faces: uploads are taken as aligned crops.'
      )
      + f' Gallery: `{service.gallery_path(label)}`.'
    )
    return (not detect, status) + people(label)

  with gr.Blocks(title='arcface_jax: who is in this photo?', analytics_enabled=False) as page:
    gr.Markdown(INTRO)
    with gr.Row():
      model = gr.Dropdown(
        service.labels, value=service.labels[0], label='Model', elem_id='model', scale=3
      )
      aligned = gr.Checkbox(value=False, label=ALIGNED_LABEL, elem_id='aligned', scale=2)
    model_status = gr.Markdown(elem_id='model-status')
    if examples.note:
      gr.Markdown(examples.note)
    with gr.Tabs():
      with gr.Tab('Identify', id='identify'):
        with gr.Row():
          id_photo = PhotoInput(
            type='filepath',
            label='Photo',
            elem_id='identify-photo',
            height=360,
            elem_classes=['photo'],
          )
          id_result = gr.Image(
            label='Faces and names',
            interactive=False,
            format='png',
            elem_id='identify-result',
            height=360,
          )
        with gr.Row():
          id_calibrated = gr.Checkbox(
            value=True, label='calibrated threshold', elem_id='identify-calibrated', scale=1
          )
          id_threshold = gr.Slider(
            -1,
            1,
            value=0.3,
            step=0.01,
            scale=3,
            label='threshold (cosine): a face scoring above it is named',
            elem_id='identify-threshold',
          )
        id_button = gr.Button('Identify', variant='primary', elem_id='identify-button')
        id_status = gr.Markdown(elem_id='identify-status')
        id_table = gr.Dataframe(
          value=_table([], views.IDENTIFY_COLUMNS),
          interactive=False,
          label='Faces',
          elem_id='identify-table',
        )
        if examples.identify:
          gr.Examples([[p] for p in examples.identify], inputs=[id_photo], label='Sample photos')
      with gr.Tab('Verify', id='verify'):
        with gr.Row():
          ver_a = PhotoInput(
            type='filepath',
            label='First photo',
            elem_id='verify-a',
            height=280,
            elem_classes=['photo'],
          )
          ver_b = PhotoInput(
            type='filepath',
            label='Second photo',
            elem_id='verify-b',
            height=280,
            elem_classes=['photo'],
          )
          ver_faces = gr.Image(
            label='Faces compared',
            interactive=False,
            format='png',
            elem_id='verify-faces',
            height=280,
          )
        with gr.Row():
          ver_calibrated = gr.Checkbox(
            value=True, label='calibrated threshold', elem_id='verify-calibrated', scale=1
          )
          ver_threshold = gr.Slider(
            -1,
            1,
            value=0.3,
            step=0.01,
            scale=3,
            label='threshold (cosine): pairs scoring above it are one person',
            elem_id='verify-threshold',
          )
        ver_button = gr.Button('Compare', variant='primary', elem_id='verify-button')
        ver_status = gr.Markdown(elem_id='verify-status')
        if examples.verify:
          gr.Examples(
            [list(pair) for pair in examples.verify], inputs=[ver_a, ver_b], label='Sample pairs'
          )
      with gr.Tab('Enrol', id='enrol'):
        en_name = gr.Textbox(
          label='Name', placeholder='the person in the photos', elem_id='enrol-name'
        )
        en_photos = gr.File(
          label='Photos of this person (one face each; the largest is used)',
          file_count='multiple',
          file_types=['image'],
          type='filepath',
          elem_id='enrol-photos',
        )
        en_button = gr.Button('Enrol', variant='primary', elem_id='enrol-button')
        en_status = gr.Markdown(elem_id='enrol-status')
        if examples.enrol:
          gr.Examples(
            [[n, list(ps)] for n, ps in examples.enrol],
            inputs=[en_name, en_photos],
            label='Sample person',
          )
      with gr.Tab('Gallery', id='gallery'):
        ga_status = gr.Markdown(elem_id='gallery-status')
        with gr.Row():
          ga_table = gr.Dataframe(
            value=_table([], PEOPLE_COLUMNS),
            interactive=False,
            label='People',
            elem_id='gallery-table',
            scale=2,
          )
          ga_map = gr.Plot(label='Embedding map', elem_id='gallery-map', scale=3)
        ga_button = gr.Button('Refresh', elem_id='gallery-refresh')

    gallery_outputs = [ga_table, ga_map, ga_status]
    id_inputs = [model, id_photo, aligned, id_calibrated, id_threshold]
    id_outputs = [id_result, id_table, id_status, id_threshold, id_calibrated]
    id_photo.change(identify_upload, id_inputs, id_outputs)  # an upload or a sample picked
    for event in (id_button.click, id_calibrated.input):
      event(identify, id_inputs, id_outputs)
    id_threshold.release(
      identify_at_threshold, [model, id_photo, aligned, id_threshold], id_outputs
    )
    ver_inputs = [model, ver_a, ver_b, aligned, ver_calibrated, ver_threshold]
    ver_outputs = [ver_faces, ver_status, ver_threshold, ver_calibrated]
    for event in (ver_button.click, ver_calibrated.input):
      event(verify, ver_inputs, ver_outputs)
    ver_threshold.release(
      verify_at_threshold, [model, ver_a, ver_b, aligned, ver_threshold], ver_outputs
    )
    en_button.click(enrol, [model, en_name, en_photos, aligned], [en_status, *gallery_outputs])
    # The tab is filled when the page loads and after each enrolment here; Refresh reads the
    # file again (another visitor may have enrolled someone).
    ga_button.click(people, [model], gallery_outputs)
    model_outputs = [aligned, model_status, *gallery_outputs]
    model.change(pick_model, [model], model_outputs)
    page.load(pick_model, [model], model_outputs)
  return page


def launch(
  page: gr.Blocks, *, host: str, port: int, allowed_paths: Sequence[str] = (), block: bool = True
) -> Any:
  """Serves `page` on host:port; never through a public share link."""
  print(f'serving the page on http://{host}:{port}/ (Ctrl-C stops it)', flush=True)
  return page.launch(
    server_name=host,
    server_port=port,
    share=False,
    inbrowser=False,
    show_error=True,
    quiet=True,
    prevent_thread_lock=not block,
    allowed_paths=[os.path.abspath(p) for p in allowed_paths],
    max_file_size='200mb',
    footer_links=[],
    css=CSS,
  )
