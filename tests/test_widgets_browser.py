"""The explorer in a real JupyterLab driven by Debian's headless chromium (Playwright, no downloaded browser).

A tiny random LM and a small ReLU SAE are saved to a temp run; a notebook loads both from disk with
saelib and shows `Explorer`. The test runs all cells, moves the sliders, picks a feature and edits
the text box, and checks what the live view says against the same computation done here.
Screenshots land in tests/artifacts/ (git-ignored). Never run `playwright install` (it downloads a browser);
the kernel counts as ready only when the status bar reads "Python 3 (ipykernel) | Idle" (the toolbar shows
idle before a kernel exists), and sessions are deleted through /api/sessions before and after.
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

import pytest
import torch

from saelib import analysis
from saelib.sae import SAE, SAEConfig

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
JUPYTER = Path(sys.executable).parent / "jupyter"
TEXTS = ["Dogs are man's best friend.", "Neural networks process information.", "London is a major city."]
LAYER, D_SAE, TOP_K = 1, 96, 5
IDLE = "Python 3 (ipykernel) | Idle"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian chromium at /usr/bin/chromium (apt-get install -y chromium); CI installs it",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_run(lm, run_dir: Path) -> SAE:
    """Save the tiny LM as a local model directory and a random ReLU SAE in run_dir/sae."""
    lm.model.save_pretrained(run_dir / "model")
    lm.tokenizer.save_pretrained(run_dir / "model")
    gen = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(d_in=lm.d_model, d_sae=D_SAE, arch="relu"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(lm.d_model, D_SAE, generator=gen) * 5.0)
        sae.b_enc.fill_(-1.0)
        sae.W_dec.copy_(torch.randn(D_SAE, lm.d_model, generator=gen) / lm.d_model**0.5)
    sae.save(run_dir / "sae", metadata={"model": lm.name, "layer": LAYER, "site": "resid"})
    return sae


def write_notebook(path: Path, run_dir: Path) -> None:
    cells = [
        "import sys\nfrom saelib.lm import load_lm\nfrom saelib.sae import load_sae\n"
        "from saelib.widgets import Explorer\nprint(sys.executable)",
        f"lm = load_lm({str(run_dir / 'model')!r})\nsae = load_sae({str(run_dir)!r})",
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


def summaries(top: analysis.TopFeatures) -> list[str]:
    return [top.summary(i) for i in range(len(top.texts))]


def test_explorer_sliders_in_jupyterlab(tmp_path, tiny_llama):
    from playwright.sync_api import expect, sync_playwright

    run_dir = tmp_path / "run"
    sae = make_run(tiny_llama, run_dir)
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    write_notebook(notebook_dir / "explorer.ipynb", run_dir)
    acts = analysis.encode_texts(tiny_llama, sae, TEXTS)  # what the kernel should show, computed here
    expected_start = summaries(analysis.top_features(acts, 0.0, TOP_K))
    expected_top3 = summaries(analysis.top_features(acts, 0.0, 3))
    strongest_text = int(acts.text_max.max(dim=1).values.argmax())  # still active at half the maximum
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    port, token = free_port(), "saelib-test-token"
    server = start_lab(notebook_dir, tmp_path / "home", port, token)
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
                page.goto(f"http://127.0.0.1:{port}/lab/tree/explorer.ipynb?reset&token={token}")
                status = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem", has_text="ipykernel")
                expect(status).to_contain_text(IDLE, timeout=90_000)  # a kernel really exists

                page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(r"^Run$")).click()
                page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(r"^Run All Cells$")).click()
                expect(page.locator(".jp-InputPrompt").first).to_contain_text("[1]:", timeout=60_000)
                view = page.locator(".saelib-explorer-view")
                expect(view).to_be_visible(timeout=90_000)
                expect(page.locator(".jp-OutputArea-output").first).to_contain_text(
                    ".venv"
                )  # the venv's kernel
                active = view.locator(".saelib-active")
                for i, text in enumerate(expected_start):
                    expect(active.nth(i)).to_have_text(text)
                page.screenshot(path=str(ARTIFACTS / "explorer-1-start.png"), full_page=True)

                top_k = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="top k"))
                top_k.locator(".noUi-handle").focus()
                page.keyboard.press("ArrowLeft")
                page.keyboard.press("ArrowLeft")
                for i, text in enumerate(expected_top3):
                    expect(active.nth(i)).to_have_text(text)
                page.screenshot(path=str(ARTIFACTS / "explorer-2-top-k-3.png"), full_page=True)

                threshold = page.locator(
                    ".widget-slider", has=page.locator(".widget-label", has_text="threshold")
                )
                readout = threshold.locator(".widget-readout")
                readout.click()
                page.keyboard.press("Control+A")
                page.keyboard.type("1000")  # above the largest activation: clamped to the slider's max
                page.keyboard.press("Enter")
                for i in range(len(TEXTS)):
                    expect(active.nth(i)).to_have_text(f"0 of {D_SAE} latents active (0.00%), 0 listed")
                page.screenshot(path=str(ARTIFACTS / "explorer-3-threshold-max.png"), full_page=True)
                threshold.locator(".noUi-handle").focus()
                for _ in range(100):  # back down to half the maximum
                    page.keyboard.press("ArrowLeft")
                expect(active.nth(strongest_text)).not_to_have_text(re.compile(r"^0 of "))

                status_text = page.locator(".saelib-explorer-status")
                expect(status_text).to_contain_text("redraw")
                # the redraw time is shown, not asserted: `python -m saelib.bench explorer` measures it
                assert re.search(r"redraw [\d.]+ ms", status_text.inner_text())

                picker = page.locator(".widget-dropdown select")
                second = picker.locator("option").nth(1).get_attribute("value")
                picker.select_option(value=second)
                chosen = re.match(r"f\d+", picker.locator("option:checked").inner_text()).group(0)
                expect(view).to_contain_text(f"{chosen} on each text")

                textbox = page.locator(".widget-textarea textarea")
                textbox.fill("London is a major city.")
                page.locator(".saelib-explorer-update").click()
                expect(active).to_have_count(1)
                expect(view).to_contain_text("London is a major city.")
                expect(status_text).to_contain_text("last encode")
                page.screenshot(path=str(ARTIFACTS / "explorer-4-new-text.png"), full_page=True)
            finally:
                browser.close()
    finally:
        stop_lab(server, port, token)
