"""Outputs appear whole or not at all, with the user's umask, and a killed run's litter is swept by the next."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hypernets import atomic
from hypernets.atomic import Staging, atomic_write, sweep_stale, write_directory


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)]
)
def test_files_and_directories_honour_the_umask(mask, file_mode, dir_mode, umask, tmp_path) -> None:
    umask(mask)
    atomic_write(tmp_path / "a.txt", lambda path: Path(path).write_text("a"))
    write_directory(tmp_path / "d", lambda staging: (staging / "f").write_text("f"))
    atomic_write(tmp_path / "new" / "deep" / "b.txt", lambda path: Path(path).write_text("b"))
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "d").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "new" / "deep").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "new" / "deep" / "b.txt").read_text() == "b"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")

    def fail(temporary: str) -> None:
        Path(temporary).write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), temporary)

    with pytest.raises(OSError) as info:
        atomic_write(path, fail)
    assert info.value.filename == str(path)  # named as the user knows it, not by the temporary
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_missing_parents_are_removed_when_nothing_is_published(tmp_path) -> None:
    with pytest.raises(RuntimeError), Staging() as staging:
        staging.file(tmp_path / "a" / "b" / "c.txt", lambda path: Path(path).write_text("c"))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_staged_outputs_are_published_together_or_not_at_all(tmp_path) -> None:
    with pytest.raises(OSError), Staging() as staging:
        staging.directory(tmp_path / "model", lambda d: (d / "w").write_text("w"))
        staging.file(tmp_path / "report.json", lambda p: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error", p)))
    assert list(tmp_path.iterdir()) == []
    with Staging() as staging:
        staging.directory(tmp_path / "model", lambda d: (d / "w").write_text("w"))
        staging.file(tmp_path / "report.json", lambda p: Path(p).write_text("{}"))
    assert sorted(os.listdir(tmp_path)) == ["model", "report.json"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_replacing_a_directory_keeps_one_in_place_and_removes_the_old(exchange, tmp_path, monkeypatch) -> None:
    if not exchange:
        monkeypatch.setattr(atomic, "_renameat2", None)
    target = tmp_path / "pruned"
    write_directory(target, lambda d: (d / "version").write_text("0"))
    for version in range(1, 4):
        write_directory(target, lambda d, v=version: (d / "version").write_text(str(v)), overwrite=True)
        assert (target / "version").read_text() == str(version)
    assert os.listdir(tmp_path) == ["pruned"]
    with pytest.raises(FileExistsError):
        write_directory(target, lambda d: None)


def test_the_directory_is_never_missing_while_it_is_replaced(tmp_path) -> None:
    """A reader polling the path during 300 replacements always finds a complete directory."""
    target = tmp_path / "pruned"
    write_directory(target, lambda d: (d / "weights").write_text("x" * 1000))
    missing, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            if not (target / "weights").is_file():
                missing.append(time.perf_counter())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(300):
            write_directory(target, lambda d: (d / "weights").write_text("y" * 1000), overwrite=True)
    finally:
        done.set()
        watcher.join()
    assert missing == []


def test_a_dead_processs_temporaries_are_swept_and_a_live_ones_kept(tmp_path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale_file = tmp_path / f".out.bin.{dead_pid}.0000.tmp"
    stale_dir = tmp_path / f".out.bin.{dead_pid}.0001.tmp"
    live = tmp_path / f".out.bin.{os.getppid()}.0002.tmp"  # our parent is alive
    other = tmp_path / f".other.bin.{dead_pid}.0003.tmp"
    stale_file.write_bytes(b"x" * 100)
    stale_dir.mkdir()
    (stale_dir / "inner").write_text("x")
    live.write_text("in progress")
    other.write_text("another output's")
    assert sorted(sweep_stale(tmp_path / "out.bin")) == [stale_file, stale_dir]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name])


# -- SIGKILL at random points: the final path holds the old or the new result, and the next run sweeps ----------
KILL_SEEDS = range(2)


def _start(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after(process: subprocess.Popen, seconds: float) -> int:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return process.returncode


def _temporaries(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def predict_argv(tmp_path_factory) -> tuple[list[str], float]:
    """A ``hypernets predict`` of a 40 MB GPT-2 and how long it takes uninterrupted."""
    from hypernets import LoGAH

    root = tmp_path_factory.mktemp("kill")
    LoGAH(hidden=16, layers=1, heads=2, rank=4, max_ck=16).save_pretrained(root / "hnet")
    argv = [
        sys.executable,
        "-m",
        "hypernets.cli",
        "predict",
        "--hypernet",
        str(root / "hnet"),
        "--model",
        "gpt2:n_layer=2,n_embd=512,n_head=8",
        "--overwrite",
    ]
    start = time.perf_counter()
    subprocess.run([*argv, "--out", str(root / "reference.safetensors")], check=True, capture_output=True)
    return argv, time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.parametrize("seed", KILL_SEEDS)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_sigkill_during_predict_leaves_the_old_or_the_new_file(seed, existing, predict_argv, tmp_path) -> None:
    import random

    argv, seconds = predict_argv
    out = tmp_path / "gpt2.safetensors"
    if existing:
        out.write_bytes(b"old")
    delay = random.Random(seed).uniform(0.5 * seconds, 1.1 * seconds)  # the late half: decoding and writing
    _kill_after(_start([*argv, "--out", str(out)], tmp_path), delay)
    if out.exists() and out.read_bytes() != b"old":
        assert len(load_file(out)) > 0  # a complete file, never a mix
    else:
        assert out.exists() == existing
    subprocess.run([*argv, "--out", str(out)], check=True, capture_output=True)
    assert len(load_file(out)) > 0 and _temporaries(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_sigkill_during_prune_leaves_the_old_or_the_new_directory(existing, tmp_path) -> None:
    import random

    from metaprune.population import build_population, population_specs
    from metaprune.store import load_pruned

    (member,) = build_population(tmp_path / "population", population_specs(1, train_steps=20), progress=False)
    argv = [
        sys.executable,
        "-m",
        "metaprune.cli",
        "prune",
        "--model",
        str(member / "model.safetensors"),
        "--config",
        str(member / "model.json"),
        "--speedup",
        "1.5",
        "--finetune-steps",
        "20",
        "--max-acc-drop",
        "100",
        "--out",
        "pruned",
        "--overwrite",
    ]
    start = time.perf_counter()
    subprocess.run(argv, cwd=tmp_path, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    reference = load_pruned(None, tmp_path / "pruned").state_dict()
    if not existing:
        for path in (tmp_path / "pruned", tmp_path / "report.json"):
            atomic._remove(path)
    rng = random.Random(int(existing))
    for _ in range(2):
        _kill_after(_start(argv, tmp_path), rng.uniform(0.6 * seconds, 1.05 * seconds))
        if (tmp_path / "pruned").exists():
            state = load_pruned(None, tmp_path / "pruned").state_dict()
            assert all((state[k] == v).all() for k, v in reference.items())  # same seed: the same model
    subprocess.run(argv, cwd=tmp_path, check=True, capture_output=True)
    assert _temporaries(tmp_path) == [] and (tmp_path / "pruned" / "model.safetensors").is_file()


@pytest.mark.slow
def test_sigkill_during_train_resumes_and_leaves_no_litter(tmp_path) -> None:
    argv = [
        sys.executable,
        "-m",
        "hypernets.cli",
        "train",
        "--out",
        "run",
        "--steps",
        "6",
        "--checkpoint-every",
        "2",
        "--archs-per-step",
        "1",
        "--batch-size",
        "4",
        "--hidden",
        "16",
        "--heads",
        "2",
        "--layers",
        "1",
        "--threads",
        "1",
    ]
    for delay in (6.0, 8.0):
        _kill_after(_start(argv, tmp_path), delay)
    subprocess.run(argv, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "run" / "hypernet" / "model.safetensors").is_file()
    assert _temporaries(tmp_path / "run" / "hypernet") == []


def test_sigterm_removes_temporaries_and_exits_143(tmp_path) -> None:
    """A CI timeout sends SIGTERM: the command stops cleanly, publishing nothing."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from hypernets.command import run_command, Parser\n"
        "from hypernets.atomic import atomic_write\n"
        "def slow(args):\n"
        "    atomic_write(Path('out.bin'), lambda p: (Path(p).write_text('partial'), print('ready', flush=True),"
        " time.sleep(30)))\n"
        "parser = Parser(prog='demo'); parser.set_defaults(run=slow)\n"
        "sys.exit(run_command('demo', parser, []))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143 and "terminated" in err
    assert list(tmp_path.iterdir()) == []
