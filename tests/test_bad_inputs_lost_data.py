"""Issue 17, classes 1 and 2 (lost data) and the output items of class 10: nothing a user wrote is lost, and every
fault of an output is found before the work, with one line.

Class 1, lost data: a report replaces only a folder it wrote itself (its marker lists its files), never a user's
files, the data, the current folder; concurrent reports never share a staging folder; a failed report leaves none.
Class 2, lost data: an atomic write replaces only a regular file (not a device node, fifo, link to one, folder).
Class 10, outputs: overlong names, full disks and unwritable places give one line before the work; a failed write
keeps the previous file; `fix --certify` is checked before --out is written; a second run writing the same output
at the same time is refused at its start.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shiftlab import _io
from shiftlab.cli import main
from shiftlab.errors import InputError
from shiftlab.report import staging as H

RESULTS = {"schema": "shiftlab-report/2"}  # the smallest results a report page renders (no figures)

NET = '''
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make()

    def forward(self, x):
        y = self.net(x)
        return y, y


def pair():
    return Pair()
'''


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def _holder(path: Path) -> subprocess.Popen:
    """Another process that claims ``path`` (as a shiftlab command does at its start) and keeps it until killed."""
    code = ("import sys; from shiftlab._io import claim_output; claim_output(sys.argv[1]); print('ready', flush=True); "
            "sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET)
    return path


# ------------------------------------------------------------------------------------ class 1, lost data


def test_class1_lost_data_a_report_never_replaces_a_report_folder_holding_user_files(tmp_path):
    """class 1, lost data: a report folder the user added files to (code.py, notes.txt) is refused, --force or not."""
    out = tmp_path / "report"
    H.write_report(RESULTS, out)
    H.write_report(RESULTS, out)  # its own earlier report is replaced without asking
    for name in ("code.py", "notes.txt", "figures/mine.png"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text(f"the user's {name}")
        before = _tree(out)
        for force in (False, True):
            with pytest.raises(InputError, match="did not write"):
                H.write_report(RESULTS, out, force=force)
            assert _tree(out) == before
        (out / name).unlink()
        if (out / name).parent != out and not any((out / name).parent.iterdir()):
            (out / name).parent.rmdir()  # the folder the user made for it, now empty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert (out / H.MARKER).exists() and H.is_report_folder(out)  # recognised by the marker it writes


def test_class1_lost_data_the_data_folder_and_folders_holding_inputs_are_refused(tmp_path, capsys):
    """class 1, lost data: --out equal to --data, or a report folder holding the data or the weights, is refused
    up front even with --force (a report replaces its whole folder)."""
    data = tmp_path / "photos"
    (data / "figures").mkdir(parents=True)
    (data / "a.png").write_bytes(b"x")
    (data / "figures" / "b.png").write_bytes(b"y")
    before = _tree(data)
    assert main(["report", "--quick", "--out", str(data), "--data", str(data), "--force", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds --data" in err and len(err.strip().splitlines()) == 1
    assert _tree(data) == before
    report = tmp_path / "report"  # an earlier report whose figures are used as data, or whose model as weights
    H.write_report(RESULTS, report, files={"finetuned-aps.pt": b"weights"})
    for flag, spec in (("--data", report / "index.html"), ("--weights", report / "finetuned-aps.pt"),
                       ("--model", f"{report / 'finetuned-aps.pt'}:make")):
        with pytest.raises(InputError, match=f"holds {flag}"):
            H.check_output_folder(report, force=True, inputs=[(flag, str(spec))])
    assert (report / "finetuned-aps.pt").read_bytes() == b"weights"


def test_class1_lost_data_the_current_folder_and_its_parents_are_refused(tmp_path, monkeypatch, capsys):
    """class 1, lost data: --out . (empty or not) and --out .. are refused before any work, never after it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", "..", str(work), "./"):
        with pytest.raises(InputError, match="current folder|above the current"):
            H.check_output_folder(out, force=True)
    assert main(["report", "--quick", "--out", ".", "--no-progress"]) == 2
    assert "current folder" in capsys.readouterr().err
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_class1_lost_data_concurrent_reports_stage_apart_and_both_finish(tmp_path, monkeypatch):
    """class 1, lost data: two reports into one --out at once each get their own staging folder; both finish,
    one report is left and no staging or previous folder."""
    out = tmp_path / "report"
    H.write_report(RESULTS, out)
    barrier = threading.Barrier(2, timeout=30)
    staged, errors = [], []
    real = H.render_figures

    def render(results, folder, **kwargs):
        staged.append(Path(folder).parent)
        barrier.wait()  # both runs are now writing their staging folders at the same time
        return real(results, folder, **kwargs)

    monkeypatch.setattr(H, "render_figures", render)

    def run():
        try:
            H.write_report(RESULTS, out)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(staged)) == 2
    assert H.is_report_folder(out) and (out / "index.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_class1_lost_data_a_failed_report_removes_its_staging_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    """class 1, lost data: a report that fails midway leaves the earlier report as it was and no staging folder."""
    out = tmp_path / "report"
    H.write_report(RESULTS, out)
    before = _tree(out)
    for fault in (RuntimeError("boom"), KeyboardInterrupt()):
        def broken(*args, fault=fault, **kwargs):
            raise fault

        monkeypatch.setattr(H, "render_html", broken)
        with pytest.raises(type(fault)):
            H.write_report(RESULTS, out)
        assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["report"]


# ------------------------------------------------------------------------------------ class 2, lost data


def test_class2_lost_data_force_replaces_only_regular_files(tmp_path):
    """class 2, lost data: with force, a fifo, a link to a fifo, a dangling link and a link to a folder are refused
    (before any work, and by the write itself); a link to a regular file writes the file it names."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    links = {"to_fifo": fifo, "dangling": tmp_path / "nothing", "to_folder": tmp_path / "folder"}
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    for path in [fifo, *(tmp_path / n for n in links)]:
        with pytest.raises(InputError, match="not a regular file|link to nothing|is a folder"):
            _io.check_output_path(path, force=True, flag="--json")
        with pytest.raises(InputError, match="not a regular file|link to nothing|is a folder"):
            _io.write_json(path, {"a": 1}, force=True)
    assert fifo.is_fifo() and all((tmp_path / n).is_symlink() for n in links)
    target = tmp_path / "real.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    _io.write_json(tmp_path / "link.json", {"a": 1}, force=True)
    assert (tmp_path / "link.json").is_symlink() and target.read_text() == '{\n  "a": 1\n}\n'


def test_class2_lost_data_a_device_node_is_refused_up_front_by_every_writer(tmp_path, capsys):
    """class 2, lost data: --json /dev/full --force is refused before any work (the model is never loaded)."""
    missing = f"{tmp_path / 'no_such.py'}:make"  # a model that would fail later: the output must fail first
    for argv in (["audit", "--model", missing, "--json", "/dev/full", "--force"],
                 ["inspect", "--model", missing, "--input-size", "8", "8", "--json", "/dev/null", "--force"],
                 ["fix", "--model", missing, "--method", "blur", "--out", "/dev/full", "--force"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "character device, not a regular file" in err and len(err.strip().splitlines()) == 1
    assert Path("/dev/full").is_char_device() and Path("/dev/null").is_char_device()


# ---------------------------------------------------------------------------------- class 10, the outputs


def test_class10_overlong_output_names_are_one_line_errors_before_the_work(tmp_path, capsys):
    """class 10, overlong output paths: a component over NAME_MAX or a path over PATH_MAX is refused with one line
    before any work; a name that fits is written although its temporary file's name would not have."""
    long_name = tmp_path / ("a" * 300 + ".json")
    long_path = tmp_path / (("d" * 200 + "/") * 25) / "x.json"
    for path in (long_name, long_path):
        with pytest.raises(InputError, match="too long|bytes long"):
            _io.check_output_path(path, flag="--json")
    missing = f"{tmp_path / 'no_such.py'}:make"
    for argv in (["audit", "--model", missing, "--json", str(long_name)],
                 ["report", "--out", str(tmp_path / ("r" * 300)), "--no-progress"],
                 ["fix", "--model", missing, "--method", "aps", "--out", str(long_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "bytes long" in err and len(err.strip().splitlines()) == 1
    fits = tmp_path / ("b" * 250 + ".json")
    _io.write_json(fits, {"a": 1})
    assert fits.exists() and sorted(p.name for p in tmp_path.iterdir()) == [fits.name]


def test_class10_a_full_disk_is_found_before_the_work(tmp_path, monkeypatch, capsys):
    """class 10, a full disk found only after the run: too little free space is refused up front, by each writer."""
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=4096))
    with pytest.raises(InputError, match="MB free"):
        _io.check_output_path(tmp_path / "out.json", flag="--json")
    missing = f"{tmp_path / 'no_such.py'}:make"
    for argv in (["audit", "--model", missing, "--json", str(tmp_path / "a.json")],
                 ["report", "--out", str(tmp_path / "report"), "--no-progress"],
                 ["finetune", "--model", missing, "--fix", "aps", "--steps", "1", "--data", str(tmp_path), "--out",
                  str(tmp_path / "f.pt")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "MB free" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_class10_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """class 10, full-disk output paths: a write failing with ENOSPC (at fsync) or EFBIG (a real file-size limit,
    in a subprocess) is a one-line InputError, the temporary file is gone and the previous file intact."""
    target = tmp_path / "results.json"
    target.write_text("previous")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InputError, match="No space left.*previous file is unchanged"):
        _io.write_json(target, {"a": 1}, force=True)
    monkeypatch.undo()
    assert target.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); from shiftlab import _io; "
            "from shiftlab.errors import InputError\n"
            "try:\n    _io.write_json(sys.argv[1], {'x': 'y' * 200000}, force=True)\n"
            "except InputError as exc:\n    print(exc)\n    sys.exit(2)\n")
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "File too large" in done.stdout and "Traceback" not in done.stderr
    assert target.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_class10_fix_certify_is_checked_before_out_is_written(tmp_path, net, capsys):
    """class 10, fix --certify with bad values: refused before --out is written (bad sizes, and a model certify
    refuses), so a refused run leaves no file behind."""
    out = tmp_path / "fixed.pt"
    for spec, certify in ((f"{net}:make", ["0", "0"]), (f"{net}:make", ["-3", "8"]),
                          (f"{net}:make", ["100000", "100000"]), (f"{net}:pair", ["8", "8"])):
        assert main(["fix", "--model", spec, "--method", "aps", "--out", str(out), "--certify", *certify]) == 2
        assert not out.exists()
        err = capsys.readouterr().err
        assert "certify" in err.lower() and len(err.strip().splitlines()) == 1
    assert main(["fix", "--model", f"{net}:make", "--method", "aps", "--out", str(out), "--certify", "8", "8"]) == 0
    assert out.exists()


def test_class10_a_second_run_on_the_same_output_is_refused_at_its_start(tmp_path, capsys):
    """class 10, a second run on the same --json: while another process holds the output (--json, --out file or
    report folder), a run writing it is refused before any work; the claim dies with its process."""
    missing = f"{tmp_path / 'no_such.py'}:make"
    cases = [(tmp_path / "a.json", ["audit", "--model", missing, "--json"]),
             (tmp_path / "fixed.pt", ["fix", "--model", missing, "--method", "aps", "--out"]),
             (tmp_path / "report", ["report", "--no-progress", "--out"])]
    for path, argv in cases:
        holder = _holder(path)
        try:
            assert main([*argv, str(path)]) == 2
            err = capsys.readouterr().err
            assert "being written by another shiftlab run" in err and len(err.strip().splitlines()) == 1
        finally:
            holder.kill()  # like kill -9: the claim goes with the process
            holder.wait()
        _io.claim_output(path)  # free again
        _io.release_claims()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_class10_claims_are_released_when_a_command_ends(tmp_path, net):
    """class 10, a second run on the same --json: a finished (or refused) command leaves its output free for the
    next one, and only what it wrote next to it."""
    out = tmp_path / "fixed.pt"
    assert main(["fix", "--model", f"{net}:make", "--method", "aps", "--out", str(out)]) == 0
    assert main(["fix", "--model", f"{net}:make", "--method", "aps", "--out", str(out)]) == 2  # exists
    holder = _holder(out)  # another process can claim it: nothing is held any more
    holder.kill()
    holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.pt", "net.py"]


def test_class1_lost_data_a_folder_moved_aside_between_two_looks_is_not_called_foreign(tmp_path, monkeypatch):
    """class 1: another run moves the earlier report aside between this run's "exists?" and "a folder?" looks;
    this run then finds nothing there and puts its report in place, rather than refusing."""
    import os

    out = tmp_path / "report"
    H.write_report(RESULTS, out)
    real_isdir, moved = os.path.isdir, []

    def isdir(path):
        if Path(path) == out and not moved and sys._getframe(1).f_code.co_name == "_swap_in":  # the other run's
            # rename lands right here, between _swap_in's "exists?" and "a folder?"
            os.rename(out, tmp_path / ".other-run-previous")
            moved.append(True)
        return real_isdir(path)

    monkeypatch.setattr(os.path, "isdir", isdir)
    H.write_report(RESULTS, out)
    assert moved and H.is_report_folder(out) and (out / "index.html").exists()
