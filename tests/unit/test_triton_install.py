"""Finding tritonserver and preparing its backend directory, without starting it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytest import MonkeyPatch

from pipeline.errors import ServiceError, UsageError
from pipeline.triton import _http
from pipeline.triton import install as install_mod
from pipeline.triton.server import TritonInstall, TritonServer, locate_tritonserver
from pipeline.triton.stubs import kill_stubs


def _fake_wheel(root: Path, pys: tuple[str, ...] = ("3.11", "3.12")) -> Path:
    """The layout of nvidia-pytriton's pytriton/tritonserver with empty files."""
    (root / "bin").mkdir(parents=True)
    binary = root / "bin" / "tritonserver"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (root / "backends" / "python").mkdir(parents=True)
    (root / "backends" / "python" / "libtriton_python.so").write_bytes(b"")
    (root / "backends" / "python" / "triton_python_backend_utils.py").write_text("")
    for py in pys:
        (root / "python_backend_stubs" / py).mkdir(parents=True)
        (root / "python_backend_stubs" / py / "triton_python_backend_stub").write_bytes(b"")
    return binary


def test_explicit_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="not found or not executable") as err:
        locate_tritonserver(tmp_path / "nope" / "tritonserver", cache_dir=tmp_path)
    assert err.value.hint and "nvidia-pytriton" in err.value.hint


def test_nothing_found_names_what_was_tried(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(install_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(install_mod, "_wheel_root", lambda: None)
    with pytest.raises(ServiceError, match="none given, none on PATH") as err:
        locate_tritonserver(None, cache_dir=tmp_path)
    assert err.value.hint and "nvidia-pytriton" in err.value.hint
    with pytest.raises(ServiceError, match="none on PATH"):
        TritonServer()


def test_wheel_layout_gets_a_backend_dir_once(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(install_mod, "_py_tag", lambda: "3.11")
    binary = _fake_wheel(tmp_path / "wheel")
    install = locate_tritonserver(binary, cache_dir=tmp_path / "cache", stub_numpy1=False)
    assert install.source == "explicit" and install.backend_dir is not None
    links = install.backend_dir / "python"
    assert sorted(p.name for p in links.iterdir()) == [
        "libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]
    assert all(p.is_symlink() for p in links.iterdir())
    stub = tmp_path / "wheel" / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
    assert (links / "triton_python_backend_stub").resolve() == stub.resolve()
    inode = links.stat().st_ino
    again = locate_tritonserver(binary, cache_dir=tmp_path / "cache", stub_numpy1=False)
    assert again.backend_dir == install.backend_dir and links.stat().st_ino == inode  # reused
    (links / "libtriton_python.so").unlink()
    (links / "libtriton_python.so").symlink_to(tmp_path / "elsewhere.so")
    third = locate_tritonserver(binary, cache_dir=tmp_path / "cache", stub_numpy1=False)
    assert third.backend_dir is not None
    assert (third.backend_dir / "python" / "libtriton_python.so").resolve() == (
        tmp_path / "wheel" / "backends" / "python" / "libtriton_python.so").resolve()
    env = install.environment({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/x"})
    assert env["PATH"].split(os.pathsep)[0] == str(install.stub_bin_dir)
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [str(install.lib_dir), "/x"]
    assert install.argv() == [str(binary), f"--backend-directory={install.backend_dir}"]


def test_wheel_without_stub_for_this_python(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(install_mod, "_py_tag", lambda: "3.99")
    binary = _fake_wheel(tmp_path / "wheel")
    with pytest.raises(ServiceError, match=r"no python backend stub for Python 3\.99.*3\.11, 3"):
        locate_tritonserver(binary, cache_dir=tmp_path / "cache", stub_numpy1=False)


def test_full_install_keeps_its_own_environment(tmp_path: Path) -> None:
    (tmp_path / "opt" / "bin").mkdir(parents=True)
    (tmp_path / "opt" / "backends" / "python").mkdir(parents=True)
    binary = tmp_path / "opt" / "bin" / "tritonserver"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    install = locate_tritonserver(binary, cache_dir=tmp_path / "cache")
    assert install.backend_dir == tmp_path / "opt" / "backends"
    assert install.stub_bin_dir is None and install.lib_dir is None
    assert install.environment({"PATH": "/usr/bin"}) == {"PATH": "/usr/bin"}


def test_start_rejects_bad_arguments(tmp_path: Path) -> None:
    server = TritonServer(TritonInstall(binary=Path("/bin/false"), source="explicit"))
    with pytest.raises(UsageError, match="model_control"):
        server.start(tmp_path, model_control="sometimes")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="explicit"):
        server.start(tmp_path, model_control="poll", load=["m"])
    with pytest.raises(ServiceError, match="not a directory"):
        server.start(tmp_path / "missing")
    assert server.stop() is None


def test_error_message_reads_triton_errors() -> None:
    assert _http.error_message(b'{"error":"failed to load \'m\'"}') == "failed to load 'm'"
    assert _http.error_message(b"plain text") == "plain text"
    assert _http.error_message(b'{"ok": 1}') == '{"ok": 1}'


def test_kill_stubs_ignores_other_processes(tmp_path: Path) -> None:
    assert kill_stubs(tmp_path / "m" / "1") == []
