"""The wheel installs and runs: `pip install signmix` (or a Ray cluster that installs the wheel)
gets every sub-package, not only the ones a hand-written list remembered.

The wheel is built from this checkout and installed with ``--no-deps`` into a fresh virtual
environment that sees the already-installed dependencies (torch, ray, mlflow, ...) through a
``.pth`` line but not the source tree: the commands run from another folder, and the test checks
that ``search`` was imported from the new environment's site-packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("spaces", "trainables", "search", "mlflow_server")


def _site_packages(venv: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    # Built from a clean copy: setuptools keeps a build/ folder whose stale files would hide a
    # package that the configuration no longer finds.
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in PRODUCT:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(work / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    wheel = next((work / "dist").glob("signmix-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # The dependencies as installed beside this interpreter, after the new environment's own
    # site-packages; a path added by a .pth line has its own .pth files (the editable install's
    # finder among them) left unprocessed, so the source tree stays out of sight.
    deps = [p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir()]
    _site_packages(venv).mkdir(parents=True, exist_ok=True)
    (_site_packages(venv) / "signmix_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    if install.returncode != 0 and "--python" in install.stderr:  # pip older than 22.3: install by target
        install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                                  str(_site_packages(venv)), str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    return venv


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_wheel_holds_every_package_of_the_product(wheel_env):
    installed = _site_packages(wheel_env)
    source = {str(p.parent.relative_to(ROOT)) for package in PRODUCT for p in (ROOT / package).rglob("__init__.py")}
    shipped = {str(p.parent.relative_to(installed)) for package in PRODUCT for p in (installed / package).rglob("__init__.py")}
    assert source - shipped == set()


def test_the_installed_wheel_runs_from_another_folder(wheel_env, tmp_path):
    (tmp_path / "exp.yaml").write_text(textwrap.dedent("""\
        name: wheel-check
        base_model: prajjwal1/bert-tiny
        domains:
          books: {path: data/books}
          dvd: {path: data/dvd}
        search:
          targets: [books]
        plan: {}
        """))
    where = _run(wheel_env, tmp_path, "-c", "import search, search.settings.config; print(search.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(_site_packages(wheel_env))
    for args in (("--help",), ("plan", "--help")):  # the console script the wheel installs
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        run = subprocess.run([str(wheel_env / "bin" / "signmix"), *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert "usage: signmix" in run.stdout
    load = _run(wheel_env, tmp_path, "-c",
                "from search.settings.config import load_config; cfg = load_config('exp.yaml'); "
                "print(cfg.search.targets, cfg.plan.compatibility)")
    assert load.returncode == 0, load.stderr
    assert "['books'] activation_fsd" in load.stdout
