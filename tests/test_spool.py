"""The durable outbox folder (spool.py): written before put returns, deleted on delivery,
read back in order, malformed files skipped and counted, bounded, one process per folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from amulet_stream.outputs.mqtt.outbox import Message
from amulet_stream.outputs.mqtt.spool import DurableOutbox, SpoolError


def alert(i: int) -> Message:
    return Message("amulet/m1/alert", json.dumps({"event_id": f"e{i}"}), 1, False, "alert")


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.msg"))


def test_alerts_are_files_until_delivered_and_come_back_in_order(tmp_path: Path) -> None:
    box = DurableOutbox(10, 10, tmp_path / "o")
    msgs = [alert(i) for i in range(3)]
    for m in msgs:
        box.put(m)
    box.put(Message("amulet/m1/score", "{}", 0, False, "score"))  # scores: memory only
    assert files(tmp_path / "o") == ["000000000001.msg", "000000000002.msg", "000000000003.msg"]
    for name in files(tmp_path / "o"):
        assert stat.S_IMODE((tmp_path / "o" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "o").stat().st_mode) == 0o700
    head = box.peek()
    assert head is msgs[0]
    box.done(head)
    assert files(tmp_path / "o") == ["000000000002.msg", "000000000003.msg"]
    box.close()

    again = DurableOutbox(10, 10, tmp_path / "o")  # a restart
    assert again.replayed == 2 and len(again) == 2
    payloads = []
    while (m := again.peek()) is not None:
        payloads.append(json.loads(m.payload)["event_id"])
        again.done(m)
    assert payloads == ["e1", "e2"]
    assert files(tmp_path / "o") == []
    again.put(alert(9))  # numbering goes on after the highest file seen
    assert files(tmp_path / "o") == ["000000000004.msg"]
    again.close()


def test_malformed_files_are_skipped_counted_and_deleted(tmp_path: Path) -> None:
    folder = tmp_path / "o"
    box = DurableOutbox(10, 10, folder)
    box.put(alert(1))
    box.put(alert(2))
    box.close()
    (folder / "000000000001.msg").write_bytes(b'{"topic": "amulet/m1/al')  # torn
    (folder / "000000000005.msg").write_bytes(b"\xff\xfe not json")
    (folder / "000000000006.msg").write_text('{"topic": "t", "payload": "p", "qos": 7}')
    (folder / "000000000007.msg").write_text('["a list"]')
    (folder / "junk.msg").write_text("{}")
    (folder / "000000000008.tmp").write_text("interrupted")
    again = DurableOutbox(10, 10, folder)
    assert again.corrupt == 5
    assert again.replayed == 1
    m = again.peek()
    assert m is not None and json.loads(m.payload) == {"event_id": "e2"}
    assert files(folder) == ["000000000002.msg"]
    assert not list(folder.glob("*.tmp"))
    again.close()


def test_the_folder_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    box = DurableOutbox(3, 3, tmp_path / "o")
    for i in range(5):
        box.put(alert(i))
    assert len(files(tmp_path / "o")) == 3
    assert box.dropped_by_kind["alert"] == 2
    box.close()
    smaller = DurableOutbox(2, 2, tmp_path / "o")  # queue_limit lowered between starts
    assert len(smaller) == 2 and len(files(tmp_path / "o")) == 2
    smaller.close()


def test_a_second_process_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    box = DurableOutbox(10, 10, tmp_path / "o")
    with pytest.raises(SpoolError, match="in use by another amulet-stream process"):
        DurableOutbox(10, 10, tmp_path / "o")
    box.close()
    DurableOutbox(10, 10, tmp_path / "o").close()


def test_a_full_disk_keeps_the_alert_in_memory_and_counts_it(tmp_path: Path) -> None:
    box = DurableOutbox(10, 10, tmp_path / "o")
    os.chmod(tmp_path / "o", 0o500)
    try:
        if os.access(tmp_path / "o", os.W_OK):  # root writes anyway: use a file in its place
            os.chmod(tmp_path / "o", 0o700)
            box.folder = tmp_path / "not-a-dir"
            box.folder.write_text("")
        box.put(alert(1))
    finally:
        os.chmod(tmp_path / "o", 0o700)
    assert box.write_errors == 1
    assert len(box) == 1  # still sent while the process lives
    box.close()


def test_last_states_survive_a_restart(tmp_path: Path) -> None:
    box = DurableOutbox(10, 10, tmp_path / "o")
    box.save_states({"m1": '{"state": "anomaly"}'})
    box.close()
    again = DurableOutbox(10, 10, tmp_path / "o")
    assert again.load_states() == {"m1": '{"state": "anomaly"}'}
    (tmp_path / "o" / "states.json").write_text("[1, 2]")
    assert again.load_states() == {}  # a malformed file is ignored (and logged)
    again.close()


def test_fifos_symlinks_and_folders_in_the_outbox_never_block_or_swell(tmp_path: Path) -> None:
    """Found by the stranger test: a symlink to /dev/zero grew the process to 7.9 GB, a FIFO
    hung the start. Each is now a malformed entry, read without waiting or following."""
    folder = tmp_path / "o"
    folder.mkdir()
    os.mkfifo(folder / "000000000003.msg")
    os.symlink("/dev/zero", folder / "000000000004.msg")
    (folder / "000000000005.msg").mkdir()
    os.mkfifo(folder / "states.json")
    box = DurableOutbox(10, 10, folder)
    assert box.corrupt == 3 and len(box) == 0
    assert box.load_states() == {}
    assert files(folder) == ["000000000005.msg"]  # a folder cannot be deleted: said so
    box.close()


def test_a_file_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(SpoolError, match=r"afile: File exists \(a file is in the way\)"):
        DurableOutbox(10, 10, tmp_path / "afile" / "outbox")
    (tmp_path / "o" / "lock").mkdir(parents=True)
    with pytest.raises(SpoolError, match=r"o/lock: Is a directory"):
        DurableOutbox(10, 10, tmp_path / "o")


def test_a_real_disk_full_error_keeps_monitoring(tmp_path: Path) -> None:
    """EFBIG from a file-size limit (RLIMIT_FSIZE), in a child process: the alert cannot be
    written, it is logged and counted, and it still waits in memory for the broker."""
    import subprocess
    import sys

    code = f"""
import resource, signal, json
from pathlib import Path
from amulet_stream.outputs.mqtt.outbox import Message
from amulet_stream.outputs.mqtt.spool import DurableOutbox
box = DurableOutbox(10, 10, Path({str(tmp_path / "o")!r}))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))
body = json.dumps({{"event_id": "e1", "pad": "x" * 64}})
box.put(Message("amulet/m1/alert", body, 1, False, "alert"))
print(json.dumps({{"errors": box.write_errors, "queued": len(box)}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"errors": 1, "queued": 1}
    assert "File too large" in proc.stderr and "waits in memory only" in proc.stderr
    assert files(tmp_path / "o") == [] and not list((tmp_path / "o").glob("*.tmp"))
