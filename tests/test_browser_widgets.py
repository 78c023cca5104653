"""Notebooks 02 and 03 in a real browser: JupyterLab on 127.0.0.1 and headless Chromium, driven by Playwright.

What a person does: open the notebook, see what it stored (a static image of the panel's first run and the
note that the sliders need a live kernel, no widget errors), Run All, then move each slider and the dropdown.
Each move must redraw the panel's output area: one ``<img>`` whose ``src`` changed and one text that shows the
new setting; and the browser console must hold no error beyond the allow-list below.

The test starts and stops everything itself, by process id: one JupyterLab server for the module (its own
port, token, runtime/config/data/settings/workspaces folders under a tmp path; Popen in its own session,
its process group and its descendants (the kernels) ended at teardown) and one Chromium (Debian's
``/usr/bin/chromium``, a fresh user-data-dir, started here and connected to over the DevTools protocol, so
``playwright install`` is never needed; its process group ended at teardown). The notebooks are COPIES in the
tmp folder, and autosave is off: the repository's files are never written (checked at the end).

Chromium missing: installed with apt-get when this runs as root on Debian (logged), otherwise the test
fails with the command to run. It never skips.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]
STATIC_NOTE_START = "[a static image of the first run"
# How an ipywidget shows where no widget can be drawn (an untrusted stored notebook): its Python repr.
WIDGET_REPR = re.compile(r"\b(interactive|VBox|HBox|Box|IntSlider|FloatSlider|Dropdown|Output|Label)"
                         r"\((children|value|description|options|layout|outputs)=")
RUN_ALL_TIMEOUT_S = 300
MOVE_TIMEOUT_S = 90

# Console errors that are not the widgets' and are expected here. Everything else fails the test.
ALLOWED_CONSOLE_ERRORS = [
    # The notebooks' "Open in Colab" badge is an image on colab.research.google.com: offline it cannot load.
    # Allowed only for URLs outside the local server (checked with the message's location below).
    re.compile(r"^Failed to load resource: net::ERR_[A-Z_]+$"),
]

log = logging.getLogger(__name__)

pytestmark = pytest.mark.browser


@dataclass(frozen=True)
class PanelNotebook:
    name: str
    text_start: str  # the first word of the panel's text
    dropdown_option: str  # chosen in the dropdown
    dropdown_shows: str  # what the text shows then


NOTEBOOKS = [
    PanelNotebook("02_parallel_verify.ipynb", "parallel_v1", "top1_match", "policy=top1_match"),
    PanelNotebook("03_var_baseline_comparison.ipynb", "comparison", "sampled (top_k=0)", "sampled (top_k=0)"),
]


# ---- processes ------------------------------------------------------------------------------------
def ensure_chromium() -> Path:
    """Debian's Chromium: present, or installed with apt-get when we are root; otherwise a one-line failure."""
    if CHROMIUM.exists():
        return CHROMIUM
    how = "install Debian's chromium (as root: apt-get install -y chromium); the browser test needs /usr/bin/chromium"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing: {how}", pytrace=False)
    log.warning("%s is missing: installing Debian's chromium with apt-get for the browser test", CHROMIUM)
    print(f"\n{CHROMIUM} is missing: installing Debian's chromium (apt-get install -y chromium) ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing and apt-get could not install it ({done.stderr.strip()[-300:]}): {how}",
                    pytrace=False)
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (children, grandchildren...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End a process started here in its own session: SIGTERM to its group, then SIGKILL to what is left of the
    group and of its descendants (JupyterLab's kernels run in sessions of their own)."""
    below = descendants(process.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                continue
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Lab:
    url: str
    token: str
    notebooks: Path
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def _settings(folder: Path) -> None:
    """JupyterLab user settings for the test: no autosave, every cell in the DOM, no network checks."""
    for plugin, values in {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One JupyterLab server for both notebooks, serving copies of them."""
    base = tmp_path_factory.mktemp("lab")
    notebooks = base / "notebooks"
    notebooks.mkdir()
    for nb in NOTEBOOKS:
        shutil.copy(NOTEBOOK_DIR / nb.name, notebooks / nb.name)
    _settings(base / "settings")
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               JUPYTER_DATA_DIR=str(base / "data"), IPYTHONDIR=str(base / "ipython"), MPLCONFIGDIR=str(base / "mpl"),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),  # this checkout
               SDVAR_THREADS="1")
    log_path = base / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}",
           "--ServerApp.allow_root=True", "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
           f"--LabApp.user_settings_dir={base / 'settings'}", f"--LabApp.workspaces_dir={base / 'workspaces'}"]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(cmd, cwd=notebooks, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = Lab(url=f"http://127.0.0.1:{port}", token=token, notebooks=notebooks, log_path=log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited with {process.returncode}:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(f"{server.url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within 120 s:\n{server.log_tail()}")
                time.sleep(0.5)
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium started here (fresh user-data-dir), and Playwright connected to it."""
    from playwright.sync_api import sync_playwright

    chromium = ensure_chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    log_path = profile.parent / "chromium.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                    "about:blank"], stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start (exit {process.poll()}): {log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with sync_playwright() as pw:
            connected = pw.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
            try:
                yield connected
            finally:
                connected.close()
    finally:
        stop(process)


# ---- in the page ----------------------------------------------------------------------------------
_STATE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim());
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const errors = [...panel.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
      .map(e => e.textContent).filter(t => t.includes('Error') || t.includes('Traceback'));
  return {prompts, status: indicator ? indicator.getAttribute('data-status') : null, errors};
}"""

_SHOWN_JS = """() => {
  const outs = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .sdvar-panel-output');
  if (outs.length !== 1) return {panels: outs.length};
  const out = outs[0];
  return {panels: 1, images: [...out.querySelectorAll('img')].map(i => i.src),
          texts: [...out.querySelectorAll('pre')].map(p => p.textContent),
          readouts: [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .sdvar-panel .widget-readout')]
                    .map(r => r.textContent.trim())};
}"""


def menu(page, title: str, command: str) -> None:
    page.click(f"div.lm-MenuBar-itemLabel:text-is('{title}')")
    page.click(f"li.lm-Menu-item[data-command='{command}']")


def run_all_and_wait(page, code_cells: int) -> None:
    """Clear the stored outputs (so no stored prompt passes for a new one), Run All, wait until every code cell ran."""
    menu(page, "Edit", "editmenu:clear-all")
    deadline = time.monotonic() + 30
    while not all(p == "[ ]:" for p in page.evaluate(_STATE_JS)["prompts"]):
        if time.monotonic() > deadline:
            pytest.fail(f"clearing the outputs did not clear the prompts: {page.evaluate(_STATE_JS)}")
        time.sleep(0.2)
    menu(page, "Run", "runmenu:run-all")
    deadline, state = time.monotonic() + RUN_ALL_TIMEOUT_S, None
    while time.monotonic() < deadline:
        state = page.evaluate(_STATE_JS)
        if state and state["errors"]:
            pytest.fail("a cell failed in the browser:\n" + "\n".join(state["errors"])[-3000:])
        if state and len(state["prompts"]) == code_cells and state["status"] == "idle" and \
                all(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"]):
            return
        time.sleep(0.5)
    pytest.fail(f"Run All did not finish within {RUN_ALL_TIMEOUT_S} s: {state}")


def shown(page) -> dict:
    """What the panel's output area displays: exactly one image and one text (nothing stacked)."""
    got = page.evaluate(_SHOWN_JS)
    assert got["panels"] == 1, f"expected one panel output area, found {got['panels']}"
    assert len(got["images"]) == 1 and got["images"][0].startswith("data:image/png;base64,"), got["images"]
    assert len(got["texts"]) == 1, got["texts"]
    return got


def wait_for_redraw(page, before: dict, expected: str) -> dict:
    """Wait until the output area shows a new image and a text holding ``expected``."""
    deadline, got = time.monotonic() + MOVE_TIMEOUT_S, None
    while time.monotonic() < deadline:
        got = page.evaluate(_SHOWN_JS)
        if got.get("panels") == 1 and got["images"] and got["texts"] and got["images"][-1] != before["images"][0] \
                and expected in got["texts"][-1]:
            return shown(page)
        time.sleep(0.25)
    texts = got.get("texts") if got else None
    pytest.fail(f"the panel did not redraw with {expected!r} within {MOVE_TIMEOUT_S} s; it shows {texts!r} "
                f"(image changed: {bool(got and got.get('images') and got['images'][-1] != before['images'][0])})")


def settings_in(text: str) -> tuple[int, float]:
    match = re.search(r"gamma=(\d+) cfg=(\d+\.\d\d)", text)
    assert match, f"the panel's text shows no gamma/cfg: {text!r}"
    return int(match.group(1)), float(match.group(2))


def _unexpected(messages: list[dict], server_url: str) -> list[dict]:
    bad = []
    for m in messages:
        external = not m["url"].startswith(server_url)
        if m["type"] == "error" and external and any(p.fullmatch(m["text"]) for p in ALLOWED_CONSOLE_ERRORS):
            continue
        bad.append(m)
    return bad


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the test -------------------------------------------------------------------------------------
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[nb.name.split("_")[0] for nb in NOTEBOOKS])
def test_the_sliders_redraw_the_panel_in_a_real_browser(lab, browser, nb):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    before_digest = _digest(NOTEBOOK_DIR / nb.name)
    code_cells = sum(c["cell_type"] == "code" for c in json.loads((lab.notebooks / nb.name).read_text())["cells"])
    context = browser.contexts[0] if browser.contexts else browser.new_context()
    page = context.new_page()
    messages: list[dict] = []
    page.on("console", lambda m: messages.append({"type": m.type, "text": m.text, "url": m.location.get("url", "")})
            if m.type == "error" else None)
    page.on("pageerror", lambda e: messages.append({"type": "pageerror", "text": str(e), "url": ""}))
    try:
        workspace = nb.name.split("_")[0]
        page.goto(f"{lab.url}/lab/workspaces/nb{workspace}/tree/{nb.name}?reset&token={lab.token}")
        page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status=idle]",
                               timeout=120_000)

        # opened: the stored panel cell is a static image with the note, and no widget is left to restore
        stored = page.locator(f".jp-OutputArea-child:has-text('{STATIC_NOTE_START}')")
        try:  # the outputs render after the kernel connects
            stored.first.wait_for(timeout=60_000)
        except PlaywrightTimeout:
            pytest.fail("the stored notebook does not show the note of the static image")
        assert stored.count() == 1, "the stored notebook shows the note of the static image more than once"
        note_cell = page.locator(f".jp-Cell:has(.jp-OutputArea-child:has-text('{STATIC_NOTE_START}'))")
        assert note_cell.locator("img").count() == 1, "the stored notebook does not show the static image of the first run"
        assert page.locator("text=Error displaying widget").count() == 0
        stored_texts = page.evaluate("() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) "
                                     ".jp-OutputArea-output')].map(e => e.textContent)")
        raw = [t[:120] for t in stored_texts if WIDGET_REPR.search(t)]
        assert not raw, f"the stored notebook shows widgets as raw text: {raw}"

        run_all_and_wait(page, code_cells)

        # Run All: the panel shows a run, and its text agrees with its sliders
        now = shown(page)
        text = now["texts"][0]
        assert text.startswith(nb.text_start), text
        gamma, cfg = settings_in(text)
        assert now["readouts"][:2] == [str(gamma), f"{cfg:.2f}"], (now["readouts"], text)
        assert STATIC_NOTE_START not in page.evaluate(
            "() => document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .sdvar-panel-output').textContent")

        handles = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .sdvar-panel .noUi-handle")
        assert handles.count() == 2, "the panel needs a gamma and a cfg slider"
        # gamma: one step down (ArrowLeft on the slider's handle, as a keyboard user moves it)
        gamma_to = gamma - 1 if gamma > 1 else gamma + 1
        handles.nth(0).focus()
        handles.nth(0).press("ArrowLeft" if gamma > 1 else "ArrowRight")
        now = wait_for_redraw(page, now, f"gamma={gamma_to} cfg={cfg:.2f}")
        # cfg: one step (0.25) down
        cfg_to = cfg - 0.25 if cfg >= 0.25 else cfg + 0.25
        handles.nth(1).focus()
        handles.nth(1).press("ArrowLeft" if cfg >= 0.25 else "ArrowRight")
        now = wait_for_redraw(page, now, f"gamma={gamma_to} cfg={cfg_to:.2f}")
        assert now["readouts"][:2] == [str(gamma_to), f"{cfg_to:.2f}"], now["readouts"]
        # the dropdown
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .sdvar-panel .widget-dropdown select").select_option(
            label=nb.dropdown_option)
        now = wait_for_redraw(page, now, nb.dropdown_shows)
        assert f"gamma={gamma_to} cfg={cfg_to:.2f}" in now["texts"][0]

        unexpected = _unexpected(messages, lab.url)
        assert not unexpected, f"browser console errors: {unexpected}"
    finally:
        page.close()
    assert _digest(NOTEBOOK_DIR / nb.name) == before_digest, "the repository's notebook was modified"
