"""DVC's own views: the plots page renders with the network off, and make repro says what to commit as the
baseline of `dvc exp show` / `dvc metrics diff` / `dvc plots diff` (the full pipeline: tests/test_pipeline.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lposs.experiment import dvc_views

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def test_the_page_template_has_dvcs_placeholders_and_no_remote_script():
    page = dvc_views.page_template("window.vegaEmbed = function () {};", "Vega test")
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page and "<script src" not in page and "http" not in page
    with pytest.raises(ValueError, match="</script"):
        dvc_views.page_template("var a = '</script>';", "bad")


def sh(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV}, timeout=300,
                            check=False)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def tiny_repo(tmp_path):
    """A git + DVC repo with one CSV plot and a committed first version."""
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        sh(cmd, tmp_path)
    (tmp_path / "sweep.csv").write_text("value,miou\n0.5,40.0\n0.95,55.0\n")
    (tmp_path / "dvc.yaml").write_text("plots:\n- sweep.csv:\n    x: value\n    y: miou\n")
    sh(["git", "add", "-A"], tmp_path)
    sh(["git", "commit", "-qm", "first"], tmp_path)
    return tmp_path


def test_dvc_plots_diff_page_renders_offline_in_a_browser(tiny_repo):
    pytest.importorskip("vl_convert", reason="vl-convert-python (lposs[pipeline]) not installed")
    out = sh([sys.executable, "-m", "lposs.experiment.dvc_views"], tiny_repo)
    assert "offline page" in out and "dvc.lock" not in out  # no pipeline run here: nothing to commit
    assert "html_template = plots/offline.html" in (tiny_repo / ".dvc" / "config.local").read_text()
    (tiny_repo / "sweep.csv").write_text("value,miou\n0.5,42.0\n0.95,57.0\n")
    sh([sys.executable, "-m", "dvc", "plots", "diff", "-o", "dvc_plots"], tiny_repo)
    page = (tiny_repo / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src" not in page and "window.vegaEmbed" in page
    assert "workspace" in page and "HEAD" in page  # both revisions in the one chart

    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("chromium / chromedriver not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"):  # the network off
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.get((tiny_repo / "dvc_plots" / "index.html").as_uri())
        drawn = "return document.querySelectorAll('.vega-embed svg, .vega-embed canvas').length"
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(drawn) >= 1)
        remote = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                       ".filter(n => /^https?:/.test(n))")
        assert remote == []
    finally:
        driver.quit()


def test_the_baseline_hint_names_exactly_what_to_commit(tiny_repo):
    (tiny_repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    files = dvc_views.uncommitted_run_files(tiny_repo)
    assert files == ["dvc.lock"] and not dvc_views.lock_committed(tiny_repo)
    hint = dvc_views.baseline_hint(files, False)
    assert "no baseline row" in hint and 'git add dvc.lock && git commit -m "Pipeline run: dvc.lock"' in hint
    sh(["git", "add", "dvc.lock"], tiny_repo)
    sh(["git", "commit", "-qm", "run"], tiny_repo)
    assert dvc_views.uncommitted_run_files(tiny_repo) == [] and dvc_views.lock_committed(tiny_repo)
    assert dvc_views.baseline_hint([], True) is None
    (tiny_repo / "dvc.lock").write_text("schema: '2.0'\nstages: {a: {}}\n")
    assert "differs from the committed one" in dvc_views.baseline_hint(dvc_views.uncommitted_run_files(tiny_repo),
                                                                        True)
    (tiny_repo.parent / "not-a-repo").mkdir()
    assert dvc_views.uncommitted_run_files(tiny_repo.parent / "not-a-repo") is None


def test_stages_run_through_papermill_with_the_kernel_encrypted(tmp_path):
    """dvc.yaml's runner is papermill's command line: parameters reach the notebook, and where pyzmq has
    CurveZMQ and the kernelspec declares it the kernel's sockets are encrypted (no plain-TCP warning)."""
    import nbformat
    import zmq
    from jupyter_client.kernelspec import KernelSpecManager

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(
        "print('x is', x)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    result = subprocess.run([sys.executable, "-m", "lposs.experiment.run_notebook", "-k", "python3", "--language",
                             "python", "--log-output", "--no-progress-bar", str(tmp_path / "in.ipynb"),
                             str(tmp_path / "out.ipynb"), "-p", "x", "7"], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1], check=False)
    assert result.returncode == 0, result.stderr
    assert "x is 7" in result.stdout + result.stderr
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.metadata["papermill"]["parameters"] == {"x": 7} and out.metadata["papermill"]["exception"] is None
    spec = KernelSpecManager().get_kernel_spec("python3")
    if zmq.has("curve") and "curve" in (spec.metadata or {}).get("supported_encryption", []):
        assert "without encryption" not in result.stderr
    else:
        pytest.skip("no CurveZMQ here (pyzmq without libsodium, or an older kernelspec): the warning is true")
