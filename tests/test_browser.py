"""The explore notebooks in a real browser: JupyterLab on 127.0.0.1 (token, free port) + headless Debian
chromium driven by Playwright. Each notebook is run in the browser (Run All Cells, live kernel, demo run);
the test checks that plotly figures and ipywidgets render, that a widget control re-renders its figure
through the kernel, and saves a screenshot under artifacts/. Setup: tools/browser_setup.sh."""
import json, os, shutil, signal, socket, subprocess, sys, time, urllib.request, uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


NOTEBOOKS = ["codebook_usage.ipynb", "concept_heatmaps.ipynb", "concept_explorer.ipynb"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _api(base, token, path, method="GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A JupyterLab server over a folder holding copies of the explore notebooks; shut down afterwards."
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium not found: run tools/browser_setup.sh")
    pytest.importorskip("jupyterlab", reason="run tools/browser_setup.sh")
    root = tmp_path_factory.mktemp("lab")
    for name in NOTEBOOKS: shutil.copy(ROOT / "nbs" / "explore" / name, root / name)
    port, token = _free_port(), uuid.uuid4().hex
    env = dict(os.environ, CLVQ_HOME=str(root / "home"), JUPYTER_CONFIG_DIR=str(root / "jcfg"),
               JUPYTERLAB_SETTINGS_DIR=str(root / "lab-settings"), JUPYTERLAB_WORKSPACES_DIR=str(root / "lab-ws"),
               JUPYTER_RUNTIME_DIR=str(root / "runtime"))
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try: _api(base, token, "/api/status"); break
            except Exception:
                if proc.poll() is not None or time.time() - t0 > 90:
                    pytest.fail(f"JupyterLab did not start:\n{(root / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield dict(base=base, token=token, root=root)
    finally:
        try:
            for k in _api(base, token, "/api/kernels") or []: _api(base, token, f"/api/kernels/{k['id']}", "DELETE")
        except Exception: pass
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(lab["root"] / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1700})
        try: yield ctx
        finally: ctx.close()


def _run_notebook(page, lab, name):
    page.goto(f"{lab['base']}/lab/tree/{name}?token={lab['token']}&reset", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # JupyterLab may ask which kernel to start: accept its proposal (the venv's python3)
    try:
        page.wait_for_selector(".jp-Dialog .jp-mod-accept", timeout=5_000)
        page.click(".jp-Dialog .jp-mod-accept")
    except Exception: pass
    # kernel ready (status indicator idle), then Run > Run All Cells
    page.wait_for_function("() => document.querySelector('.jp-Notebook') && "
                           "![...document.querySelectorAll('.jp-Toolbar-kernelStatus, .jp-Notebook-ExecutionIndicator')]"
                           ".some(e => /starting|connecting|unknown/i.test(e.getAttribute('data-status') || e.title || ''))",
                           timeout=60_000)
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")


@pytest.mark.parametrize("name, min_plots", [("codebook_usage.ipynb", 2), ("concept_heatmaps.ipynb", 3),
                                             ("concept_explorer.ipynb", 3)])
def test_explore_notebook_renders(lab, browser, name, min_plots):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        _run_notebook(page, lab, name)
        page.wait_for_function(f"() => document.querySelectorAll('.jp-Notebook .js-plotly-plot').length >= {min_plots}",
                               timeout=int(os.environ.get('CLVQ_BROWSER_TIMEOUT_MS', 120_000)))
        page.wait_for_selector(".jp-Notebook .jupyter-widgets .widget-dropdown select", timeout=60_000)
        assert page.locator(".jp-Notebook .jp-OutputArea-output [data-mime-type*=error], .jp-Notebook .jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']:has-text('Error')").count() == 0
        # a plotly figure really drew: its SVG has bars, heatmap cells or lines
        assert page.locator(".jp-Notebook .js-plotly-plot .main-svg").count() >= min_plots
        widget_plots = page.locator(".jp-Notebook .jupyter-widgets .js-plotly-plot")
        assert widget_plots.count() >= 1, "no figure inside the widget's Output area"
        # drive a control: the figure inside the widget must be re-rendered by the kernel
        sel = page.locator(".jp-Notebook .jupyter-widgets .widget-dropdown select").first
        options = sel.locator("option").all_text_contents()
        title = lambda: page.locator(".jp-Notebook .jupyter-widgets .js-plotly-plot .gtitle").first.text_content()
        before = title()
        if len(options) > 1:
            sel.select_option(label=options[1])
            page.wait_for_function("(b) => { const t = document.querySelector('.jp-Notebook .jupyter-widgets .js-plotly-plot .gtitle');"
                                   " return t && t.textContent !== b; }", arg=before, timeout=60_000)
            assert title() != before
        news = page.locator(".jp-Notification-Toast button:text-is('No')")   # JupyterLab's news opt-in toast
        if news.count(): news.first.click()
        page.wait_for_timeout(800)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"browser_{Path(name).stem}.png"))
        assert not [e for e in errors if "plotly" in e.lower() or "widget" in e.lower()], errors
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"browser_{Path(name).stem}_FAILED.png"))
        print("page errors:", errors)
        raise
    finally:
        page.close()
