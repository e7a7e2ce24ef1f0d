"""A real browser: JupyterLab in headless Chromium runs lesson 04 and a learner's clicks drive its widgets.

JupyterLab is started on 127.0.0.1 (a free port, a token, every Jupyter folder under tmp_path, quick mode)
over a copy of notebooks/04_gated_pixelcnn.ipynb; Debian's Chromium, driven by Playwright, opens the
lesson and runs it with Run > Run All Cells. Then, as a learner would:

- the sampling scrubber renders as a live ipywidgets slider (not "Loading widget...", not the text
  "VBox(...)" a page without widgets shows), and dragging its slider changes the picture below it;
- the class picker (ipywidgets.interact over a Dropdown of the ten classes) renders live, and choosing
  another class changes its picture.

Needs the browser and Playwright; without them the tests skip and say so:

    sudo apt-get install -y chromium     # Debian/Ubuntu (no `playwright install`: no browser download)
    pip install -e ".[dev]"              # includes playwright

ARMINI_REQUIRE_BROWSER=1 turns those skips into failures (CI sets it where it installed the browser).
Marked `browser`: `pytest -m browser` runs only these, `pytest -m "not browser"` leaves them out.
A screenshot of the page is saved in the test's tmp_path when a step fails (the message gives the path),
and one of each widget after it was driven, to look at.
"""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
LESSON = "04_gated_pixelcnn.ipynb"  # a scrubber and a class picker, about a minute of CPU in quick mode
SCRUBBER_CELL = "viz.SamplingScrubber(cond"  # text that picks out each widget's code cell
PICKER_CELL = "ipywidgets.interact(show_class"

# Seconds. Generous: CI runs this beside the notebooks on 2 shared cores.
SERVER_START_S = 120
LESSON_RUN_S = 1200
WIDGET_S = 120


def chromium_path():
    """The Chromium to drive: $ARMINI_CHROMIUM when set, else `chromium` or `chromium-browser` on PATH (None: none)."""
    names = [os.environ["ARMINI_CHROMIUM"]] if os.environ.get("ARMINI_CHROMIUM") else ["chromium", "chromium-browser"]
    found = [shutil.which(name) for name in names if shutil.which(name)]
    return found[0] if found else None


def free_port() -> int:
    """A port nobody listens on now (the OS picks it): each xdist worker gets its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


# --------------------------------------------------------------------------- the server
def quiet_lab_settings(root: Path) -> dict:
    """Jupyter's folders under root, set so that JupyterLab makes no network call of its own: no news, no
    update check, a read-only extension manager (no PyPI search), every cell in the page (no windowing,
    so a widget further down is rendered without scrolling). Returns the environment variables."""
    dirs = {name: root / name for name in ("config", "data", "runtime", "settings", "workspaces", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    settings = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                             "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, value in settings.items():
        (dirs["settings"] / name).parent.mkdir(parents=True, exist_ok=True)
        (dirs["settings"] / name).write_text(json.dumps(value))
    (dirs["config"] / "labconfig").mkdir(exist_ok=True)
    (dirs["config"] / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/extensionmanager-extension": True}}))
    return {"JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]), "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
            "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]), "IPYTHONDIR": str(dirs["ipython"])}


class Lab:
    """A JupyterLab server of our own: a subprocess serving `folder` at `url` (token in `token`)."""

    def __init__(self, folder: Path, root: Path):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "jupyterlab.log"
        env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "ARMINI_STATIC")}  # inline figures
        env.update(quiet_lab_settings(root / "jupyter"), ARMINI_QUICK="1", PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
                   "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                   f"--ServerApp.root_dir={folder}", f"--IdentityProvider.token={self.token}",
                   "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
                   "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
                   "--LabApp.expose_app_in_browser=True"]  # window.jupyterapp: the kernel's status
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # CI containers run as root
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)

    def api(self, path: str, method: str = "GET", timeout: float = 10):
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def wait_until_up(self):
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {self.process.returncode} while starting; "
                            f"its log ({self.log}) ends:\n{tail(self.log)}")
            try:
                self.api("/api/status", timeout=5)
                return
            except OSError:
                time.sleep(1)
        pytest.fail(f"JupyterLab did not answer on {self.url} within {SERVER_START_S} s; "
                    f"its log ({self.log}) ends:\n{tail(self.log)}")

    def stop(self):
        """Shut down the kernels and the server (POST /api/shutdown), then make sure the process is gone."""
        if self.process.poll() is None:
            try:
                self.api("/api/shutdown", method="POST")
            except OSError:
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.terminate()  # the server's own handler still shuts its kernels down
                try:
                    self.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.process.kill()  # kernels notice their parent is gone and exit
                    self.process.wait()


def missing(reason: str):
    """Skip, saying what to install; fail instead under ARMINI_REQUIRE_BROWSER=1 (CI, where it was installed)."""
    if os.environ.get("ARMINI_REQUIRE_BROWSER", "").strip().lower() in {"1", "true", "yes", "on"}:
        pytest.fail(f"ARMINI_REQUIRE_BROWSER is set, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium():
    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright is not installed: pip install playwright (in the [dev] extra); "
                "no `playwright install` needed")
    path = chromium_path()
    if path is None and os.environ.get("ARMINI_CHROMIUM"):
        missing(f"ARMINI_CHROMIUM={os.environ['ARMINI_CHROMIUM']} is not an executable: point it at a Chromium "
                "or Chrome binary")
    if path is None:
        missing("no Chromium on PATH: `apt-get install -y chromium` (Debian/Ubuntu), or set ARMINI_CHROMIUM "
                "to a Chromium or Chrome binary")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu",
                                                                         "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab over a copy of the lesson in a folder of this test's own (the real notebooks untouched)."""
    root = tmp_path_factory.mktemp("browser")
    folder = root / "notebooks"
    folder.mkdir()
    shutil.copy(REPO / "notebooks" / LESSON, folder / LESSON)
    server = Lab(folder, root)
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- the page
@contextmanager
def screenshot_on_failure(page, path: Path):
    """Save a screenshot of the whole page at `path` when the block fails, and name it in the failure."""
    try:
        yield
    except BaseException as error:
        try:
            page.screenshot(path=str(path), full_page=True)
            saved = f"screenshot: {path}"
        except Exception as screenshot_error:  # noqa: BLE001 -- the page may be gone
            saved = f"(no screenshot: {screenshot_error})"
        if isinstance(error, pytest.fail.Exception):
            raise pytest.fail.Exception(f"{error.msg}\n{saved}") from None
        raise AssertionError(f"{type(error).__name__}: {error}\n{saved}") from error


KERNEL_STATUS = "() => window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel?.status ?? null"
PROMPTS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'),
                              p => p.textContent.trim())"""  # "[12]:" ran, "[*]:" running or queued, "[ ]:" not run


def wait_for_kernel(page, lab):
    deadline = time.monotonic() + SERVER_START_S
    status = None
    while time.monotonic() < deadline:
        status = page.evaluate(KERNEL_STATUS)
        if status == "idle":
            return
        time.sleep(1)
    pytest.fail(f"the lesson's kernel is not idle {SERVER_START_S} s after opening it (status: {status}); "
                f"the server's log ({lab.log}) ends:\n{tail(lab.log)}")


def run_all(page, lab):
    """Run > Run All Cells, then wait until every code cell has run; fail naming the cell that did not."""
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    start = time.monotonic()
    while True:
        prompts = page.evaluate(PROMPTS)
        if page.evaluate(KERNEL_STATUS) in ("dead", "autorestarting", "restarting"):
            pytest.fail(f"the kernel died while running {LESSON}; the server's log ({lab.log}) ends:\n{tail(lab.log)}")
        started = prompts and prompts[0] not in ("[ ]:", "[*]:")
        if started and not any("*" in p for p in prompts):
            break
        if time.monotonic() - start > LESSON_RUN_S:
            done = sum(p[1:-2].isdigit() for p in prompts)
            pytest.fail(f"{LESSON} has not finished after {LESSON_RUN_S} s ({done} of {len(prompts)} code cells ran); "
                        f"the server's log ({lab.log}) ends:\n{tail(lab.log)}")
        time.sleep(2)
    not_run = [i for i, p in enumerate(prompts) if not p[1:-2].isdigit()]
    if not_run:
        last = page.locator(".jp-Notebook .jp-CodeCell").nth(max(not_run[0] - 1, 0))
        pytest.fail(f"Run All stopped before code cell {not_run[0] + 1} of {len(prompts)} in {LESSON}; "
                    f"the cell before it shows:\n{last.locator('.jp-Cell-outputArea').inner_text()[-2000:]}")
    return time.monotonic() - start


@pytest.fixture(scope="module")
def lesson(chromium, lab, tmp_path_factory):
    """The lesson open in a Chromium page, every cell run (Run All, quick mode)."""
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WIDGET_S * 1000)
    shots = tmp_path_factory.mktemp("screenshots")
    try:
        with screenshot_on_failure(page, shots / "run-all-failure.png"):
            page.goto(f"{lab.url}/lab/tree/{LESSON}?token={lab.token}")
            page.locator(".jp-Notebook .jp-CodeCell").first.wait_for()
            wait_for_kernel(page, lab)
            seconds = run_all(page, lab)
            print(f"{LESSON}: Run All took {seconds:.0f} s in the browser")
        yield page
    finally:
        page.close()


def code_cell(page, text: str):
    cell = page.locator(".jp-Notebook .jp-CodeCell", has_text=text)
    assert cell.count() == 1, f"expected one code cell containing {text!r} in {LESSON}, found {cell.count()}"
    return cell


def live_widget(cell, part: str):
    """The cell's widget `part` (a CSS selector) once ipywidgets has rendered it; fails with what the cell
    shows instead ("Loading widget...", or a text fallback such as "VBox(children=...)")."""
    widget = cell.locator(f".jp-Cell-outputArea .jupyter-widgets {part}").first
    try:
        widget.wait_for(state="visible", timeout=WIDGET_S * 1000)
    except Exception:  # noqa: BLE001 -- playwright's TimeoutError; say what the learner would see
        shown = cell.locator(".jp-Cell-outputArea").inner_text()[:1000] or "no text (a picture, or nothing)"
        pytest.fail(f"no live widget ({part}) after {WIDGET_S} s; the cell's output shows: {shown!r}")
    text = cell.locator(".jp-Cell-outputArea").inner_text()
    assert "Loading widget" not in text and "VBox(" not in text, f"the widget did not render live:\n{text[:1000]}"
    return widget


def picture(cell) -> str:
    """The src (a data: URL of the PNG) of the image drawn in the cell's widget output."""
    image = cell.locator(".widget-output img").first
    image.wait_for(state="visible", timeout=WIDGET_S * 1000)
    return image.get_attribute("src")


def wait_for_new_picture(cell, before: str, what: str) -> str:
    deadline = time.monotonic() + WIDGET_S
    while time.monotonic() < deadline:
        images = cell.locator(".widget-output img")
        now = images.first.get_attribute("src") if images.count() else None
        if now and now != before:
            return now
        time.sleep(0.5)
    pytest.fail(f"{what}, but the picture did not change within {WIDGET_S} s")


# --------------------------------------------------------------------------- the widgets
def test_scrubber_slider_changes_the_picture(lesson, tmp_path):
    page = lesson
    with screenshot_on_failure(page, tmp_path / "scrubber-failure.png"):
        cell = code_cell(page, SCRUBBER_CELL)
        cell.scroll_into_view_if_needed()
        slider = live_widget(cell, ".widget-slider")
        live_widget(cell, ".widget-play")  # the play button beside it
        readout = slider.locator(".widget-readout")
        assert readout.inner_text().strip() == "1", f"the scrubber starts at step {readout.inner_text()!r}, not 1"
        before = picture(cell)

        # Drag the handle to the middle of the track, as a learner does.
        handle, track = slider.locator(".noUi-handle").first, slider.locator(".noUi-target").first
        box, grip = track.bounding_box(), handle.bounding_box()
        page.mouse.move(grip["x"] + grip["width"] / 2, grip["y"] + grip["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=10)
        page.mouse.up()

        step = readout.inner_text().strip()
        assert step.isdigit() and int(step) > 1, f"dragging the slider left it at step {step!r}"
        wait_for_new_picture(cell, before, f"the slider moved from step 1 to step {step}")
        cell.screenshot(path=str(tmp_path / "scrubber.png"))


def test_class_picker_changes_the_picture(lesson, tmp_path):
    page = lesson
    with screenshot_on_failure(page, tmp_path / "class-picker-failure.png"):
        cell = code_cell(page, PICKER_CELL)
        cell.scroll_into_view_if_needed()
        picker = live_widget(cell, ".widget-dropdown select")
        options = picker.locator("option").all_inner_texts()
        assert len(options) == 10, f"the class picker offers {options}, not the ten classes"
        before = picture(cell)
        picker.select_option(label=options[1])
        wait_for_new_picture(cell, before, f"the class picker moved from {options[0]!r} to {options[1]!r}")
        cell.screenshot(path=str(tmp_path / "class-picker.png"))
