"""The installed package is the whole product: a wheel built from this checkout carries the experiment and explore
notebooks and the licence, and `clvq main` runs the experiment notebook from it, outside the repository.

The slow test builds the sdist and the wheel (offline, `--no-isolation`), installs the wheel into a fresh virtual
environment that reuses the installed dependencies through a `.pth` line (nothing is downloaded), and runs the
main job on a tiny model from a folder outside the checkout."""
import json, os, subprocess, sys, sysconfig, tarfile, zipfile
from pathlib import Path

import pytest

import clvq_nb
from clvq_nb.notebooks import NOTEBOOK_FOLDERS, list_notebooks

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_apache2():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert "license = apache2" in (ROOT / "settings.ini").read_text()


def test_checkout_notebooks_are_found_first():
    nbs = list_notebooks()
    expected = {f"{d}/{p.name}" for d in NOTEBOOK_FOLDERS for p in (ROOT / "nbs" / d).glob("*.ipynb")}
    assert set(nbs) == expected
    assert all(p.is_relative_to(ROOT / "nbs") for p in nbs.values())


def _run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"
    return r


def _checkout_copy(dest: Path) -> Path:
    "The checkout's tracked and new (not ignored) files, so a build never writes build/ or egg-info into it."
    files = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            (dest / f).write_bytes((ROOT / f).read_bytes())
    return dest


def _venv_reusing_deps(d: Path) -> Path:
    "A fresh venv whose site-packages ends with this interpreter's (a .pth line): dependencies without downloads."
    _run([sys.executable, "-m", "venv", "--without-pip", d])
    py = d / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (purelib / "_reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # the dependencies' data files too (nbconvert's HTML templates), but not the kernel specs: they name this interpreter
    shared = Path(sys.prefix) / "share" / "jupyter"
    (d / "share" / "jupyter").mkdir(parents=True)
    for p in shared.iterdir() if shared.is_dir() else []:
        if p.name != "kernels": (d / "share" / "jupyter" / p.name).symlink_to(p)
    return py


@pytest.mark.slow
def test_wheel_ships_notebooks_and_runs_main_outside_repo(tmp_path, tiny_model):
    src = _checkout_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "-o", dist, src])   # sdist, then the wheel from the sdist
    whl, = dist.glob("*.whl"); sdist, = dist.glob("*.tar.gz")
    names = set(zipfile.ZipFile(whl).namelist())
    want = {f"clvq_nb/nbs/{k}" for k in list_notebooks()}
    assert want <= names, want - names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    assert any(n.endswith("/LICENSE") for n in tarfile.open(sdist).getnames())

    py = _venv_reusing_deps(tmp_path / "venv")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", whl])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CLVQ_HOME"] = str(tmp_path / "home")
    outside = tmp_path / "elsewhere"; outside.mkdir()
    probe = _run([py, "-c", "import clvq_nb, clvq_nb.notebooks as n, json; from jupyter_client.kernelspec import "
                  "KernelSpecManager as K; print(json.dumps([clvq_nb.__file__, str(n.notebook_path('run')), "
                  "K().get_kernel_spec('python3').argv[0]]))"], cwd=outside, env=env)
    pkg_file, run_nb, kernel_py = json.loads(probe.stdout)
    venv = tmp_path / "venv"
    assert Path(pkg_file).is_relative_to(venv) and Path(run_nb).is_relative_to(venv), probe.stdout
    assert Path(kernel_py).parent == py.parent, kernel_py        # papermill's kernel imports the wheel, not the checkout

    _run([venv / "bin" / "clvq", "notebooks", outside / "nbs"], cwd=outside, env=env)
    assert {p.relative_to(outside / "nbs").as_posix() for p in (outside / "nbs").rglob("*.ipynb")} == set(list_notebooks())

    shipped = Path(run_nb).parents[1]                   # site-packages/clvq_nb/nbs
    before = sorted(p.relative_to(shipped) for p in shipped.rglob("*"))
    args = ["main", "--model", tiny_model, "--layer-in", 2, "--layer-out", 4, "--max-sentences", 240, "--codebook-size", 8,
            "--methods", "kmeans", "--folds", 2, "--ig-steps", 4, "--max-train", 200, "--quiet"]
    cmd = [venv / "bin" / "clvq", *args]              # the console script: cli.find_notebook -> notebooks.notebook_path
    r = _run(cmd, cwd=outside, env=env)
    run_dir = Path(r.stdout.rsplit("run folder", 1)[1].split()[0])
    assert "executing" in r.stdout, r.stdout[-2000:]
    assert r.stdout.split("executing", 1)[1].split("->")[0].strip() == run_nb, r.stdout[-2000:]   # the wheel's notebook
    for f in ("run.ipynb", "report.html", "comparison.csv", "run.json"):
        assert (run_dir / f).exists(), f
    assert run_dir.is_relative_to(tmp_path / "home")
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*")) == before   # nothing written beside the installed notebook
