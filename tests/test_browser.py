"""The explore notebooks in a real browser: JupyterLab on 127.0.0.1 (token, free port) + headless Debian
chromium driven by Playwright. Each notebook is run in the browser (Run All Cells, live kernel, demo run);
the test checks that plotly figures and ipywidgets render, that a widget control re-renders its figure
through the kernel, and saves a screenshot under artifacts/. The human-study notebook is annotated with real typing
and clicks, closed half way and resumed, and its results cell is checked against the saved answers.
Setup: tools/browser_setup.sh."""
import contextlib, json, os, shutil, signal, socket, subprocess, sys, time, urllib.request, uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


NOTEBOOKS = ["codebook_usage.ipynb", "concept_heatmaps.ipynb", "concept_explorer.ipynb", "human_study.ipynb"]


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
    news = root / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True); news.write_text('{"fetchNews": "false"}')   # no news toast over the screenshots
    port, token = _free_port(), uuid.uuid4().hex
    from clvq_nb.viz import demo_run   # the explorers' demo run, built by the real pipeline before the browser waits on it
    subprocess.run([sys.executable, "-c", f"from clvq_nb.viz import demo_run; demo_run({str(root / 'home' / 'demo_run')!r})"],
                   check=True, env=dict(os.environ, CLVQ_HOME=str(root / "home")))
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


TIMEOUT_MS = int(os.environ.get("CLVQ_BROWSER_TIMEOUT_MS", 120_000))
ERROR_OUTPUT = (".jp-Notebook .jp-OutputArea-output [data-mime-type*=error], "
                ".jp-Notebook .jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']:has-text('Error')")


def _screenshot(page, name):
    "Let rendering settle, save artifacts/<name>."
    page.wait_for_timeout(800)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


@contextlib.contextmanager
def _page(browser, stem):
    "A new tab collecting page errors; on failure a screenshot artifacts/browser_<stem>_FAILED.png; closed afterwards."
    page, errors = browser.new_page(), []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try: yield page, errors
    except BaseException:
        if not page.is_closed():
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"browser_{stem}_FAILED.png"))
        print("page errors:", errors)
        raise
    finally:
        if not page.is_closed(): page.close()


def _widget_errors(errors): return [e for e in errors if "plotly" in e.lower() or "widget" in e.lower()]


@pytest.mark.parametrize("name, min_plots", [("codebook_usage.ipynb", 2), ("concept_heatmaps.ipynb", 3),
                                             ("concept_explorer.ipynb", 3)])
def test_explore_notebook_renders(lab, browser, name, min_plots):
    with _page(browser, Path(name).stem) as (page, errors):
        _run_notebook(page, lab, name)
        page.wait_for_function(f"() => document.querySelectorAll('.jp-Notebook .js-plotly-plot').length >= {min_plots}",
                               timeout=TIMEOUT_MS)
        page.wait_for_selector(".jp-Notebook .jupyter-widgets .widget-dropdown select", timeout=60_000)
        assert page.locator(ERROR_OUTPUT).count() == 0
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
        _screenshot(page, f"browser_{Path(name).stem}.png")
        assert not _widget_errors(errors), errors


# --- the human study: type an id, click labels, close and come back, read the results --------------------------

HUMAN = "human_study.ipynb"
ANNOTATOR = "ann-07"        # letters, a '-' and digits: JupyterLab's command-mode shortcuts must not eat them


def _until(page, cond, what, timeout_ms=60_000):
    "Poll `cond()` (Python side, e.g. a file on disk) while the page keeps running; fail naming `what`."
    t0 = time.time()
    while not cond():
        if (time.time() - t0) * 1000 > timeout_ms: raise AssertionError(f"timed out waiting for {what}")
        page.wait_for_timeout(200)


def _answer_lines(path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def _n_lines(path) -> int:
    "Complete lines in the answers file (a line being written has no newline yet)."
    return path.read_text().count("\n") if path.exists() else 0


def _start_annotating(page, annotator, first_item):
    "Type `annotator` into the id box with the keyboard, press Start / resume, wait for item `first_item` (1-based)."
    box = page.locator(".jp-Notebook .widget-text input")
    start = page.locator(".jp-Notebook button.jupyter-button:text-is('Start / resume')")
    box.wait_for(timeout=TIMEOUT_MS); start.wait_for(timeout=TIMEOUT_MS)
    assert box.is_enabled() and box.input_value() == ""
    labels = page.locator(".jp-Notebook .jupyter-widgets button.jupyter-button").filter(has_not_text="Start / resume")
    assert labels.count() == 2 and all(labels.nth(i).is_disabled() for i in range(2)), "label buttons live before an id"
    n_cells = page.locator(".jp-Notebook .jp-Cell").count()
    box.click()
    page.keyboard.type(annotator, delay=40)
    assert box.input_value() == annotator
    assert page.locator(".jp-Notebook .jp-Cell").count() == n_cells, "typing in the id box ran notebook shortcuts"
    start.click()
    # the kernel got the whole id as typed (not the first keystrokes only) and shows item `first_item`
    page.locator(f".jp-Notebook .widget-html:has-text('Item {first_item} of 12 (answering as {annotator})')").wait_for(timeout=60_000)
    page.locator(f".jp-Notebook .jupyter-widgets .js-plotly-plot .gtitle:text-is('Concept (item {first_item})')").wait_for(timeout=60_000)
    assert box.is_disabled()


def _click_answers(page, study, order, answers_file, positions, tally):
    """Answer the items at `positions` of this annotator's order by clicking a label button; after each click the
    answers file must have one more line, for exactly the item the test expects to be on screen."""
    for pos in positions:
        it = study.by_id[order[pos]]
        # the model's prediction, except for kmeans items at every third position: the methods get different scores
        label = it.pred if it.method == "clvq-vae" or pos % 3 else 1 - it.pred
        n_ok = tally.setdefault(it.method, [0, 0]); n_ok[0] += 1; n_ok[1] += label == it.pred    # [n, correct]
        page.locator(f".jp-Notebook button.jupyter-button:text-is('{study.label_names[label]}')").click()
        _until(page, lambda: _n_lines(answers_file) >= pos + 1, f"answer {pos + 1} on disk")
        assert _n_lines(answers_file) == pos + 1, "one click appended more than one line"
        last = _answer_lines(answers_file)[-1]
        assert (last["item_id"], last["answer"], last["annotator"]) == (order[pos], label, ANNOTATOR)
        nxt = f"Item {pos + 2} of" if pos + 1 < len(order) else "All "
        page.locator(f".jp-Notebook .widget-html:has-text('{nxt}')").wait_for(timeout=60_000)


def _run_cell(page, text):
    "Select the code cell whose source contains `text` and run it (Ctrl+Enter: no new cell below); return the cell."
    cell = page.locator(".jp-Notebook .jp-CodeCell").filter(has=page.locator(".jp-InputArea-editor", has_text=text))
    assert cell.count() == 1, f"{cell.count()} cells contain {text!r}"
    cell.locator(".jp-InputPrompt").click()
    page.keyboard.press("Control+Enter")
    return cell


def _table(cell) -> list[dict]:
    "The DataFrame rendered in a cell's output, as row dicts of strings (index column dropped)."
    return cell.locator(".jp-OutputArea-output table").evaluate(
        "t => { const h = [...t.querySelectorAll('thead th')].map(e => e.textContent.trim());"
        " return [...t.querySelectorAll('tbody tr')].map(r => Object.fromEntries("
        "   [...r.children].slice(1).map((c, i) => [h[i + 1], c.textContent.trim()]))); }")


def test_human_study_annotation_in_browser(lab, browser):
    """Annotate the demo study in JupyterLab with real typing and clicks, each click saved at once; close the tab and
    shut the kernel down half way, come back and resume at the next unanswered item; then the results cell shows
    per-method accuracy with Wilson intervals equal to `HumanStudy.results()` on the saved answers."""
    from clvq_nb.human import HumanStudy
    folder = lab["root"] / "home" / "human_study" / "demo"     # study_dir="" → demo_study() under the server's CLVQ_HOME
    answers_file = folder / "answers" / f"{ANNOTATOR}.jsonl"
    tally, first = {}, 4
    with _page(browser, "human_study") as (page, errors):
        _run_notebook(page, lab, HUMAN)
        page.locator(".jp-Notebook .jp-OutputArea-output:has-text('12 items in')").wait_for(timeout=TIMEOUT_MS)
        study = HumanStudy(folder)
        order = study.session(ANNOTATOR).order                  # the order the kernel will use (drawn from the id)
        assert not answers_file.exists()
        _start_annotating(page, ANNOTATOR, 1)
        _click_answers(page, study, order, answers_file, range(first), tally)
        assert page.locator(ERROR_OUTPUT).count() == 0
        _screenshot(page, "browser_human_study_item.png")
        assert not _widget_errors(errors), errors

    # the annotator leaves: tab closed, kernel shut down; only the answers file remembers anything
    for s in _api(lab["base"], lab["token"], "/api/sessions"):
        if s["path"].endswith(HUMAN): _api(lab["base"], lab["token"], f"/api/sessions/{s['id']}", "DELETE")
    assert len(_answer_lines(answers_file)) == first

    with _page(browser, "human_study_resume") as (page, errors):
        _run_notebook(page, lab, HUMAN)
        _start_annotating(page, ANNOTATOR, first + 1)          # resumed: item 5 of 12, not item 1
        _click_answers(page, study, order, answers_file, range(first, len(order)), tally)
        page.locator(f".jp-Notebook .widget-html:has-text('All 12 items answered. Thank you, {ANNOTATOR}!')").wait_for()
        _until(page, lambda: page.locator(".jp-Notebook .jupyter-widgets .js-plotly-plot").count() == 0,
               "the last concept to leave the finished widget")
        assert all(page.locator(f".jp-Notebook button.jupyter-button:text-is('{n}')").is_disabled() for n in study.label_names)
        assert [l["item_id"] for l in _answer_lines(answers_file)] == order   # each item once, in the annotator's order

        cell = _run_cell(page, "study.results()")
        expected = HumanStudy(folder).results()
        _until(page, lambda: sum(int(r["n"]) for r in _table(cell)) == len(order), "the results cell to count every answer")
        shown = {r["method"]: r for r in _table(cell)}
        assert set(shown) == set(expected.method) == {"clvq-vae", "kmeans"}
        for e in expected.itertuples():
            r = shown[e.method]
            assert (int(r["n"]), int(r["correct"])) == (e.n, e.correct) == tuple(tally[e.method])
            for col in ("accuracy", "ci_low", "ci_high"):
                assert float(r[col]) == pytest.approx(getattr(e, col), abs=1e-6), (e.method, col, r[col])
            assert float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"])
        assert shown["clvq-vae"]["accuracy"] != shown["kmeans"]["accuracy"]
        fig = _run_cell(page, "results_figure(res)")
        fig.locator(".js-plotly-plot .errorbar").first.wait_for(timeout=60_000)
        assert fig.locator(".js-plotly-plot .errorbar").count() == 2           # one interval per method
        assert page.locator(ERROR_OUTPUT).count() == 0
        cell.evaluate("e => e.scrollIntoView({block: 'start'})")      # the table and the figure below it
        _screenshot(page, "browser_human_study_results.png")
        assert not _widget_errors(errors), errors
