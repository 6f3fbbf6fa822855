"""The demo page in a real browser: headless Chromium driven by Playwright.

The page is served from a thread of this process on a free loopback port, over a tiny model
trained in the session and a gallery of held-out identities. The test uploads a photo and reads
the answer (it must be the faces API's), uploads a text file named .png and reads the message,
checks the server still answers, enrols a person and identifies them at once, finds them in the
Gallery tab after a reload, and saves a screenshot.

Chromium is Debian's package (`make test` installs it with apt-get when run as root), launched
through its executable path: Playwright's own browser download is not used. Without it the test
is skipped and says why.

    python tests/test_app_browser.py URL OUT.png   # a screenshot of a running page (docs/app.png)
"""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

CHROMIUM_PATHS = ('/usr/lib/chromium/chromium', '/usr/bin/chromium')
# This machine's network is closed: Chromium's background services would only wait on it.
CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
]
WAIT_MS = 120_000  # any one step; far above what a step takes on a loaded 2-core machine


def chromium_path() -> str | None:
  return next((p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)), None)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch_browser(playwright):
  return playwright.chromium.launch(
    executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
  )


def open_page(browser, url: str):
  page = browser.new_page(viewport={'width': 1280, 'height': 1000})
  page.set_default_timeout(WAIT_MS)
  page.goto(url, timeout=WAIT_MS)
  page.wait_for_selector('#model-status :text("fingerprint")')  # the model is loaded
  return page


def upload_and_wait(page, selector: str, path: str, status: str, expected: str) -> str:
  """Sets an upload's file and waits until the status line shows `expected`; returns it."""
  page.locator(f'{selector} input[type=file]').set_input_files(path)
  # Gradio prefixes an output with its progress ("processing | 0.1/0.3s") until the event ends,
  # and the new text can show before the prefix goes: wait for both.
  page.locator(status).filter(has_text=expected).filter(has_not_text='processing |').wait_for()
  return page.locator(status).inner_text()


def table_rows(page, selector: str, showing: str) -> list[list[str]]:
  """The body rows of a Gradio table as the cells' texts, once a cell shows `showing`.

  Gradio draws a table's body as ARIA grid rows (the header is the <thead> row), and draws it
  after the status line of the same answer: wait for its content first.
  """
  cells = f'{selector} div[role="row"] [role="gridcell"]'
  page.locator(cells).get_by_text(showing, exact=True).first.wait_for()
  rows = page.locator(f'{selector} div[role="row"]')
  return [
    [cell.strip() for cell in rows.nth(i).locator('[role="gridcell"]').all_inner_texts()]
    for i in range(rows.count())
  ]


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  if chromium_path() is None:
    pytest.skip(
      'Debian\'s chromium is not installed (looked for '
      f'{" and ".join(CHROMIUM_PATHS)}); `make test` installs it with apt-get when run '
      'as root: `apt-get install -y chromium`'
    )
  pytest.importorskip(
    'playwright', reason='playwright is in the test extra: pip install -e \'.[test]\''
  )
  import app_support

  from arcface_jax.app import page as page_lib
  from arcface_jax.app.service import PageService

  workdir = app_support.tiny_run(tmp_path_factory)
  folder = tmp_path_factory.mktemp('app_browser')
  paths = app_support.write_photos(folder / 'photos', app_support.heldout_photos(workdir))
  gallery = app_support.enrol_gallery(workdir, paths, str(folder / 'people.gallery'))
  service = PageService([workdir], gallery)
  service.recognizer(workdir)  # load and compile before the browser starts waiting
  port = _free_port()
  page = page_lib.build_page(service)
  page_lib.launch(page, host='127.0.0.1', port=port, block=False)
  try:
    yield {
      'url': f'http://127.0.0.1:{port}/',
      'workdir': workdir,
      'paths': paths,
      'gallery': gallery,
      'folder': folder,
    }
  finally:
    page.close()


def test_page_in_a_browser(served, tmp_path):
  from playwright.sync_api import sync_playwright

  from arcface_jax.faces import FaceRecognizer, Gallery

  recognizer = FaceRecognizer.load(served['workdir'])
  started = time.monotonic()
  with sync_playwright() as playwright:
    browser = launch_browser(playwright)
    try:
      page = open_page(browser, served['url'])
      assert page.locator('#aligned input').is_checked()  # the model's inputs are crops

      # Identify: the page shows the faces API's answer for the photo.
      photo = served['paths'][1, 5]
      expected = recognizer.identify(photo, Gallery.load(served['gallery']), aligned=True)[0]
      status = upload_and_wait(page, '#identify-photo', photo, '#identify-status', 'face(s)')
      assert f'threshold {expected.threshold.value:.3f}' in status
      (row,) = table_rows(page, '#identify-table', expected.name)
      assert row[1] == expected.name, row
      assert float(row[2]) == pytest.approx(expected.score, abs=1e-4)
      assert page.locator('#identify-result img').count() == 1
      page.screenshot(path=str(tmp_path / 'identify.png'), full_page=True)

      # A text file named .png: a message on the page, and the server keeps serving.
      notes = served['folder'] / 'notes.png'
      notes.write_text('not a photo')
      status = upload_and_wait(
        page, '#identify-photo', str(notes), '#identify-status', 'not an image'
      )
      assert status.strip().startswith('⚠️ notes.png: not an image file')
      upload_and_wait(page, '#identify-photo', served['paths'][6, 0], '#identify-status', 'face(s)')

      # Enrol: an empty name gets a message; then a named person is saved to the gallery file.
      page.get_by_role('tab', name='Enrol').click()
      newcomer = served['paths'][7, 0]
      page.locator('#enrol-photos input[type=file]').set_input_files(newcomer)
      page.locator('#enrol-button').click()
      page.locator('#enrol-status').filter(has_text='The name is empty').wait_for()
      page.locator('#enrol-name textarea, #enrol-name input').first.fill('heldout_7')
      page.locator('#enrol-button').click()
      page.locator('#enrol-status').filter(has_text='Enrolled heldout_7').wait_for()
      assert 'heldout_7' in Gallery.load(served['gallery']).names

      # ... and is identified at once.
      page.get_by_role('tab', name='Identify').click()
      upload_and_wait(page, '#identify-photo', newcomer, '#identify-status', 'heldout_7')
      (row,) = table_rows(page, '#identify-table', 'heldout_7')
      assert row[1] == 'heldout_7' and float(row[2]) == pytest.approx(1.0, abs=1e-3)
      page.screenshot(path=str(tmp_path / 'enrolled.png'), full_page=True)

      # Gallery: the people enrolled, also after a reload.
      page.reload()
      page.wait_for_selector('#model-status :text("fingerprint")')
      page.get_by_role('tab', name='Gallery').click()
      page.locator('#gallery-status').filter(has_text='5 people').wait_for()
      names = [row[0] for row in table_rows(page, '#gallery-table', 'heldout_7')]
      assert names == ['heldout_0', 'heldout_1', 'heldout_2', 'heldout_3', 'heldout_7']
      page.locator('#gallery-map img').wait_for()
      page.screenshot(path=str(tmp_path / 'gallery.png'), full_page=True)
    finally:
      browser.close()
  print(f'browser steps: {time.monotonic() - started:.1f} s')
  assert (tmp_path / 'identify.png').stat().st_size > 10_000


def _screenshot(url: str, out: str) -> None:
  """Identifies the first sample photo of a running page and saves a screenshot to `out`."""
  from playwright.sync_api import sync_playwright

  with sync_playwright() as playwright:
    browser = launch_browser(playwright)
    try:
      page = open_page(browser, url)
      page.locator('button.gallery-item').first.click()  # the first sample photo
      page.locator('#identify-status').filter(has_text='face(s)').wait_for()
      page.screenshot(path=out, full_page=True)
    finally:
      browser.close()


if __name__ == '__main__':
  if len(sys.argv) != 3:
    sys.exit(f'usage: python {sys.argv[0]} URL OUT.png')
  _screenshot(sys.argv[1], sys.argv[2])
  print(f'wrote {sys.argv[2]}')
