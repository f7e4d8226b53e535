"""The explorer and 03_analyze in a real JupyterLab driven by Debian's headless chromium (Playwright, no
downloaded browser), used as a teacher would: Run All, then the widgets.

A tiny random LM, its stored activations and a small ReLU SAE are saved to a temp run
(`conftest.save_tiny_run`). One test shows `Explorer` alone and drives it like a person: moves the
sliders, picks a feature, types new texts and presses Update, checking the live view against the same
computation done here and that the controls stay on screen. The other runs the real 03_analyze on the
tiny run and checks that every cell ran, the Explorer answers, and the steering and density figures
show. Screenshots land in tests/artifacts/ (git-ignored). Never run `playwright install` (it downloads
a browser); the kernel counts as ready only when the status bar reads "Python 3 (ipykernel) | Idle" (the
toolbar shows idle before a kernel exists), and sessions are deleted through /api/sessions before and after.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import save_tiny_run

from saelib import analysis, widgets

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
JUPYTER = Path(sys.executable).parent / "jupyter"
TEXTS = ["Dogs are man's best friend.", "Neural networks process information.", "London is a major city."]
D_SAE, TOP_K = 96, 5
NEW_TEXTS = ["Dogs are man's best friend.", "London is a major city."]
IDLE = "Python 3 (ipykernel) | Idle"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian chromium at /usr/bin/chromium (apt-get install -y chromium); CI installs it",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_notebook(path: Path, run_dir: Path) -> None:
    cells = [
        "import sys\nfrom saelib.lm import load_lm\nfrom saelib.sae import load_sae\n"
        "from saelib.widgets import Explorer\nprint(sys.executable)",
        # float32 like the fixture the expected texts are computed with (auto may pick bfloat16)
        f"lm = load_lm({str(run_dir / 'model')!r}, precision='float32')\nsae = load_sae({str(run_dir)!r})",
        f"explorer = Explorer(lm, sae, {TEXTS!r}, threshold=0.0, top_k={TOP_K})\nexplorer",
    ]
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"c{i}",
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for i, source in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))


def api(port: int, token: str, route: str, method: str = "GET"):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{route}", method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


def delete_sessions(port: int, token: str) -> None:
    """Kernels outlive the browser: shut every session of this server down."""
    for session in api(port, token, "/api/sessions"):
        api(port, token, f"/api/sessions/{session['id']}", method="DELETE")


def start_lab(root_dir: Path, home: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab from the venv, every config/data/runtime dir in `home`, the news pop-up off."""
    app_settings = home / "app-settings"
    app_settings.mkdir(parents=True)
    (app_settings / "overrides.json").write_text(
        json.dumps({"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}})
    )
    env = {
        **os.environ,
        "PATH": f"{JUPYTER.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
        "MPLCONFIGDIR": str(home / "mpl"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        str(JUPYTER),
        "lab",
        "--no-browser",
        "--allow-root",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        f"--LabApp.app_settings_dir={app_settings}",
    ]
    with open(home / "lab.log", "w") as log:  # the server keeps its own copy of the file descriptor
        server = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited early:\n{(home / 'lab.log').read_text()[-3000:]}")
        try:
            api(port, token, "/api/status")
            return server
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"jupyter lab did not answer within 90 s:\n{(home / 'lab.log').read_text()[-3000:]}")


def stop_lab(server: subprocess.Popen, port: int, token: str) -> None:
    with contextlib.suppress(OSError):
        delete_sessions(port, token)
    os.killpg(server.pid, signal.SIGTERM)  # the server's own process group (started with a new session)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def write_analyze_notebook(path: Path, run_dir: Path) -> None:
    """notebooks/03_analyze.ipynb with the tiny run's settings in a cell after its parameters cell, as
    papermill injects them."""
    nb = nbformat.read(ROOT / "notebooks" / "03_analyze.ipynb", as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    settings = f"run_dir = {str(run_dir)!r}\nmodel = {str(run_dir / 'model')!r}\ntop_k = {TOP_K}\n"
    settings += "steer_scales = [0, 1, 4]"
    nb.cells.insert(first + 1, nbformat.v4.new_code_cell(settings))
    nbformat.write(nb, path)


@contextlib.contextmanager
def lab_page(notebook_dir: Path, home: Path, notebook: str, run_timeout_ms: int):
    """A headless chromium page on `notebook` in a fresh JupyterLab, after Run All Cells has been clicked."""
    from playwright.sync_api import expect, sync_playwright

    port, token = free_port(), "saelib-test-token"
    server = start_lab(notebook_dir, home, port, token)
    try:
        delete_sessions(port, token)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(run_timeout_ms)
                expect.set_options(timeout=run_timeout_ms)  # Run All on a busy machine takes a while
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{notebook}?reset&token={token}")
                status = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem", has_text="ipykernel")
                expect(status).to_contain_text(IDLE, timeout=90_000)  # a kernel really exists
                page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(r"^Run$")).click()
                page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(r"^Run All Cells$")).click()
                expect(page.locator(".jp-CodeCell .jp-InputPrompt").first).to_contain_text(
                    "[1]:", timeout=60_000
                )
                yield page
            finally:
                browser.close()
    finally:
        stop_lab(server, port, token)


def assert_controls_on_screen(page) -> None:
    """The sliders and the picker are inside the window, and the view below them is no taller than its box."""
    controls = page.locator(".saelib-explorer-controls").bounding_box()
    view = page.locator(".saelib-explorer-view").bounding_box()
    window = page.viewport_size
    assert controls["y"] >= 0 and controls["y"] + controls["height"] <= window["height"], controls
    assert view["height"] <= int(widgets.VIEW_HEIGHT.removesuffix("px")) + 2, view


def summaries(top: analysis.TopFeatures) -> list[str]:
    return [top.summary(i) for i in range(len(top.texts))]


def offered(explorer: widgets.Explorer) -> dict[int, str]:
    """feature -> its label in the picker."""
    return {feature: label for label, feature in explorer.feature.options}


def test_explorer_in_jupyterlab_used_like_a_person(tmp_path, tiny_llama):
    from playwright.sync_api import expect

    run_dir = tmp_path / "run"
    sae = save_tiny_run(tiny_llama, run_dir)
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    write_notebook(notebook_dir / "explorer.ipynb", run_dir)
    here = widgets.Explorer(tiny_llama, sae, TEXTS, top_k=TOP_K)  # what the kernel should show
    acts = here.acts
    expected_start = summaries(analysis.top_features(acts, 0.0, TOP_K))
    expected_top3 = summaries(analysis.top_features(acts, 0.0, 3))
    strongest_text = int(acts.text_max.max(dim=1).values.argmax())  # still active at half the maximum
    before, after = offered(here), offered(widgets.Explorer(tiny_llama, sae, NEW_TEXTS))
    picked = next(f for f in list(before)[1:] if f in after)  # not the default, offered after the new texts
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with lab_page(notebook_dir, tmp_path / "home", "explorer.ipynb", 90_000) as page:
        view = page.locator(".saelib-explorer-view")
        expect(view).to_be_visible()
        expect(page.locator(".jp-OutputArea-output").first).to_contain_text(".venv")  # the venv's kernel
        expect(page.locator(".jp-OutputArea-output", has_text="Static copy")).to_have_count(0)  # widget only
        page.locator(".saelib-explorer-controls").evaluate("e => e.scrollIntoView({block: 'start'})")
        active = view.locator(".saelib-active")
        for i, text in enumerate(expected_start):
            expect(active.nth(i)).to_have_text(text)
        assert_controls_on_screen(page)
        page.screenshot(path=str(ARTIFACTS / "explorer-1-start.png"))

        top_k = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="top k"))
        top_k.locator(".noUi-handle").focus()
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        for i, text in enumerate(expected_top3):
            expect(active.nth(i)).to_have_text(text)
        assert_controls_on_screen(page)

        threshold = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="threshold"))
        threshold.locator(".widget-readout").click()
        page.keyboard.press("Control+A")
        page.keyboard.type("1000")  # above the largest activation: clamped to the slider's max
        page.keyboard.press("Enter")
        for i in range(len(TEXTS)):
            expect(active.nth(i)).to_have_text(f"0 of {D_SAE} latents active (0.00%), 0 listed")
        threshold.locator(".noUi-handle").focus()
        for _ in range(100):  # back down to half the maximum
            page.keyboard.press("ArrowLeft")
        expect(active.nth(strongest_text)).not_to_have_text(re.compile(r"^0 of "))
        status_text = page.locator(".saelib-explorer-status")
        # the redraw time is shown, not asserted: `python -m saelib.bench explorer` measures it
        expect(status_text).to_contain_text(re.compile(r"redraw [\d.]+ ms"))

        picker = page.locator(".widget-dropdown select")
        picker.select_option(label=before[picked])
        expect(view).to_contain_text(f"f{picked} on each text")
        assert_controls_on_screen(page)
        page.screenshot(path=str(ARTIFACTS / "explorer-2-picked.png"))

        textbox = page.locator(".widget-textarea textarea")
        textbox.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(NEW_TEXTS[0])
        page.keyboard.press("Shift+Enter")  # a newline in the box: it neither applies nor reruns the cell
        page.keyboard.type(NEW_TEXTS[1])
        hint = page.locator(".saelib-explorer-hint")
        expect(hint).to_have_text(widgets.EDITED_HINT)
        expect(active).to_have_count(len(TEXTS))  # not applied yet
        assert textbox.input_value() == "\n".join(NEW_TEXTS)
        page.screenshot(path=str(ARTIFACTS / "explorer-3-edited.png"))
        page.locator(".saelib-explorer-update").click()
        expect(active).to_have_count(len(NEW_TEXTS))
        expect(hint).to_have_text("")
        expect(status_text).to_contain_text("last encode")
        expect(picker.locator("option:checked")).to_have_text(after[picked])  # the pick survived
        expect(view).to_contain_text(f"f{picked} on each text")
        assert_controls_on_screen(page)
        page.screenshot(path=str(ARTIFACTS / "explorer-4-updated.png"))


def test_03_analyze_runs_live_and_its_explorer_answers(tmp_path, tiny_llama):
    from playwright.sync_api import expect

    run_dir = tmp_path / "run"
    save_tiny_run(tiny_llama, run_dir)
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    write_analyze_notebook(notebook_dir / "03_analyze.ipynb", run_dir)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with lab_page(notebook_dir, tmp_path / "home", "03_analyze.ipynb", 300_000) as page:
        view = page.locator(".saelib-explorer-view")
        expect(view).to_be_visible()
        expect(page.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(0)  # no cell still queued
        status = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem", has_text="ipykernel")
        expect(status).to_contain_text(IDLE)
        expect(page.locator(".jp-OutputArea-output", has_text="Traceback")).to_have_count(0)
        sweep = page.locator(".jp-OutputArea-output", has_text="Steering sweep: f").filter(has_text="cooking")
        expect(sweep).to_contain_text("(cooking_recipes)")
        sweep.screenshot(path=str(ARTIFACTS / "analyze-steering-sweep.png"))
        steering = page.locator(".jp-OutputArea-output", has_text="+= ")
        steering.first.screenshot(path=str(ARTIFACTS / "analyze-steering.png"))
        inspect = page.locator(".jp-Cell", has_text="features_table").locator(".jp-OutputArea-output")
        density = inspect.filter(has=page.locator("img"))
        expect(density).to_have_count(1)  # the density plot with the chosen features marked
        density.screenshot(path=str(ARTIFACTS / "analyze-density.png"))
        page.locator(".saelib-explorer-controls").evaluate("e => e.scrollIntoView({block: 'start'})")
        assert_controls_on_screen(page)
        page.screenshot(path=str(ARTIFACTS / "analyze-explorer.png"))
        picker = page.locator(".widget-dropdown select")
        second = picker.locator("option").nth(1)
        chosen = re.match(r"f\d+", second.inner_text()).group(0)
        picker.select_option(value=second.get_attribute("value"))
        expect(view).to_contain_text(f"{chosen} on each text")
        assert_controls_on_screen(page)
        page.screenshot(path=str(ARTIFACTS / "analyze-explorer-picked.png"))
