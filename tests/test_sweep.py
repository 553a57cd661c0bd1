"Sweep runner (clvq_nb.sweep) on the tiny parameterised notebook tests/fixtures/sweep_point.ipynb."
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pandas as pd
import pytest

from clvq_nb.sweep import expand_grid, point_id, run_sweep, notebook_parameters

FIX = Path(__file__).parent / "fixtures" / "sweep_point.ipynb"
GRID = {"a": [1, 2], "b": ["x", "yy"], "fail_if": [1]}   # 2x2 points; the two with a=1 fail on purpose


def test_fixture_declares_parameters():
    assert list(notebook_parameters(FIX)) == ["a", "b", "fail_if", "hold_file", "output_dir"]


def test_sweep_runs_records_failures_and_summarises(tmp_path):
    out = tmp_path / "sweep"
    s = run_sweep(GRID, FIX, out, progress=False)
    assert len(s) == 4
    st = dict(zip(zip(s["a"], s["b"]), s["status"]))
    assert st == {(1, "x"): "failed", (1, "yy"): "failed", (2, "x"): "done", (2, "yy"): "done"}
    done = s[s["status"] == "done"].set_index("b")
    assert done.loc["x", "score"] == 21 and done.loc["yy", "score"] == 22          # a*10 + len(b), from metrics.json
    failed = s[s["status"] == "failed"].iloc[0]
    assert failed["ename"] == "ValueError" and "fails on purpose" in failed["evalue"]
    assert failed["cell_source"].startswith("import json") and failed["cell_index"] >= 1
    # per point: executed notebook, params, marker; failure.json for failures
    p_ok, p_bad = out / point_id(dict(a=2, b="x", fail_if=1)), out / point_id(dict(a=1, b="x", fail_if=1))
    assert (p_ok / "run.ipynb").exists() and (p_ok / "done.json").exists() and (p_ok / "metrics.json").exists()
    assert (p_bad / "failure.json").exists() and not (p_bad / "done.json").exists()
    # summary files
    csv = pd.read_csv(out / "summary.csv"); assert list(csv["status"]) == list(s["status"])
    js = json.loads((out / "summary.json").read_text()); assert js["n_done"] == 2 and js["n_failed"] == 2
    html = (out / "summary.html").read_text()
    assert "plotly" in html and (out / "plotly.min.js").exists()


def test_grid_typo_is_refused_with_suggestion(tmp_path):
    with pytest.raises(ValueError, match=r"'fail_iff' \(did you mean 'fail_if'\?\)"):
        run_sweep({"a": [1], "fail_iff": [2]}, FIX, tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="set per point"):
        run_sweep({"a": [1], "output_dir": ["/tmp/x"]}, FIX, tmp_path / "s", progress=False)
    assert not list((tmp_path / "s").glob("*/run.ipynb"))       # nothing ran


def test_other_notebook_in_out_dir_refused(tmp_path):
    out = tmp_path / "s"; out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"notebook": "/elsewhere/run.ipynb"}))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run_sweep({"a": [3]}, FIX, out, progress=False)


def test_yaml_grid(tmp_path):
    g = tmp_path / "grid.yaml"; g.write_text("grid:\n  a: [3]\n  b: [zz]\n")
    s = run_sweep(g, FIX, tmp_path / "s", progress=False)
    assert list(s["status"]) == ["done"] and s.loc[0, "score"] == 32


def test_resume_after_interrupt(tmp_path):
    "Ctrl-C while point a=2 runs: point a=1 stays done, a=2 is re-run on resume, a=1 is not."
    out, hold = tmp_path / "sweep", tmp_path / "hold"
    hold.write_text("wait")
    grid = {"a": [1, 2, 3], "hold_file": [str(hold)]}
    code = textwrap.dedent(f"""
        from clvq_nb.sweep import run_sweep
        run_sweep({grid!r}, {str(FIX)!r}, {str(out)!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p1, p2, p3 = (out / point_id(dict(a=a, hold_file=str(hold))) for a in (1, 2, 3))
    try:
        t0 = time.time()
        # attempts.txt is written by point 2's cell just before it waits on the hold file: the interrupt lands inside the
        # running cell however long the kernel took to start (waiting for point.json plus a fixed 2 s let a loaded
        # machine send it before the cell ran, and the sweep then finished normally)
        while not ((p1 / "done.json").exists() and (p2 / "attempts.txt").exists()):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() - t0 < 600, "sweep did not reach point 2"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)                   # the held cell ends by itself after at most 60 s, then the sweep stops
    finally:
        hold.unlink(missing_ok=True)             # releases the point even if something went wrong
        if proc.poll() is None: proc.kill(); proc.wait()
    assert proc.returncode != 0                  # the KeyboardInterrupt propagated
    assert (p1 / "done.json").exists() and not (p2 / "done.json").exists() and not (p3 / "done.json").exists()
    s = pd.read_csv(out / "summary.csv")         # summary written on interrupt too
    assert list(s["status"])[0] == "done" and "done" not in list(s["status"])[1:]
    t1 = (p1 / "done.json").stat().st_mtime_ns
    s = run_sweep(grid, FIX, out, progress=False)  # resume
    assert list(s["status"]) == ["done"] * 3 and list(s["score"]) == [11, 21, 31]
    assert (p1 / "done.json").stat().st_mtime_ns == t1   # not re-run
    # the interrupted point resumed in its own folder (what its first attempt wrote is still there)
    assert (p2 / "attempts.txt").read_text() == "xx" and (p1 / "attempts.txt").read_text() == "x"


def test_expand_grid_2x2():
    assert len(expand_grid({"method": ["clvq", "kmeans"], "codebook_size": [100, 200]})) == 4
