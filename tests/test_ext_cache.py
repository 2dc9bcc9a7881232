"""The C++ build cache: a build killed mid-way must not make later loads wait forever."""
import contextlib
import subprocess
import sys
import time

import pytest

from tgrep import _ext


def test_stale_torch_build_lock_is_removed(tmp_path):
    (tmp_path / "lock").write_text("")  # what torch's FileBaton leaves when its build is killed
    with pytest.warns(RuntimeWarning, match="stale build lock"):
        with _ext._build_lock(tmp_path):
            assert not (tmp_path / "lock").exists()
    with _ext._build_lock(tmp_path):  # nothing stale: no warning, the lock is re-entrant across calls
        pass


def test_a_live_build_is_waited_for_and_a_killed_one_is_not(tmp_path):
    """The OS lock is held by a live builder (we wait) and released when it dies (we proceed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         f"fh = open({str(tmp_path / 'tgrep.flock')!r}, 'a+'); fcntl.flock(fh, fcntl.LOCK_EX)\n"
         f"open({str(tmp_path / 'lock')!r}, 'w').close(); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        import fcntl

        with open(tmp_path / "tgrep.flock", "a+") as fh:  # the live builder's lock is really held
            with pytest.raises(BlockingIOError):
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert (tmp_path / "lock").exists()  # ... and its torch lock is not touched meanwhile
    finally:
        holder.kill()
        holder.wait()
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="stale build lock"), _ext._build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
    assert time.perf_counter() - t0 < 30


def test_load_cpp_builds_under_the_lock(monkeypatch):
    seen = []

    @contextlib.contextmanager
    def spy(build):
        seen.append(build)
        yield

    monkeypatch.setattr(_ext, "_build_lock", spy)
    monkeypatch.setattr(_ext, "_modules", {})  # forget what this process loaded
    if _ext.load_cpp("knn") is None:
        pytest.skip(f"the C++ extension did not build here: {_ext.cpp_error('knn')}")
    assert len(seen) == 1 and seen[0].name.startswith("knn-") and seen[0].parent == _ext.cache_dir() / "ext"
