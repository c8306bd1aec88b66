"""The shipped unit under the real systemd-analyze: verify is clean, the sandbox exposure <= 2.0.

systemd-analyze comes with Debian's `systemd` package (priority important: on a standard
install, not in a minimal container image); the tests skip with that reason when it is absent.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "amulet-stream.service"
EXPOSURE_BOUND = 2.0
ANALYZE = shutil.which("systemd-analyze")
SKIP_REASON = "systemd-analyze is not installed (Debian package `systemd`)"


def _settings(text: str) -> dict[str, list[str]]:
    """Every Key=value of a unit file, in order, comments and section headers left out."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def unit_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unit copied to tmp with ExecStart at this venv's real `amulet-stream` script.

    `systemd-analyze verify` complains when ExecStart's binary does not exist, and
    /usr/local/bin/amulet-stream exists only on an installed machine.
    """
    script = Path(sys.prefix) / "bin" / "amulet-stream"
    if not script.is_file():
        pytest.skip(f"{script} is missing because the package is not installed in this venv")
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/amulet-stream " in text
    path = tmp_path_factory.mktemp("unit") / UNIT.name
    path.write_text(text.replace("ExecStart=/usr/local/bin/amulet-stream ", f"ExecStart={script} "))
    return path


def _analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if ANALYZE is None:
        pytest.skip(SKIP_REASON)
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [ANALYZE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_unit_keeps_what_the_daemon_needs() -> None:
    s = _settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert float(s["WatchdogSec"][0]) > 0
    assert s["Restart"] == ["on-failure"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["StateDirectory"] == ["amulet-stream"]
    # ALSA devices open, and only through the device ACL (PrivateDevices=yes hides /dev/snd)
    assert s["DevicePolicy"] == ["closed"]
    assert "char-alsa rw" in s["DeviceAllow"]
    assert "PrivateDevices" not in s
    # the broker (IPv4/IPv6/Unix socket) and the metrics listener stay reachable
    families = " ".join(s["RestrictAddressFamilies"]).split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)
    assert "PrivateNetwork" not in s
    assert "IPAddressDeny" not in s
    # a non-root user that can open the sound card
    assert s.get("DynamicUser") == ["yes"] or s.get("User", ["root"]) != ["root"]
    assert "audio" in " ".join(s.get("SupplementaryGroups", []) + s.get("Group", []))
    # known traps: audio group unmapped, cffi callbacks refused, process_* metrics removed
    assert s.get("PrivateUsers", ["no"]) == ["no"]
    assert s.get("MemoryDenyWriteExecute", ["no"]) == ["no"]
    assert "ProcSubset" not in s


def test_verify_is_clean(unit_copy: Path) -> None:
    proc = _analyze("verify", str(unit_copy), cwd=unit_copy.parent)
    ours = [line for line in proc.stderr.splitlines() if unit_copy.name in line]
    assert proc.returncode == 0, proc.stderr
    assert ours == [], proc.stderr


def test_verify_catches_a_broken_unit(unit_copy: Path) -> None:
    """The check above can fail: a misspelt setting makes verify complain about our unit."""
    broken = unit_copy.parent / "broken" / unit_copy.name
    broken.parent.mkdir(exist_ok=True)
    broken.write_text(unit_copy.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    proc = _analyze("verify", str(broken), cwd=broken.parent)
    assert "WatchdogSecs" in proc.stderr


def test_security_exposure_is_at_most_two(unit_copy: Path) -> None:
    proc = _analyze("security", "--offline=yes", str(unit_copy), cwd=unit_copy.parent)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"Overall exposure level for (\S+): (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout[-2000:]
    assert m.group(1) == unit_copy.name
    exposure = float(m.group(2))
    assert exposure <= EXPOSURE_BOUND, proc.stdout


# --- the unit under a real systemd ------------------------------------------------------------
# PID 1 here is not systemd (a container), so the test boots /lib/systemd/systemd as PID 1 of
# fresh pid/mount/cgroup/net/uts/ipc namespaces, inside child cgroups of the test's own, with
# private /run /tmp /var /dev and read-only /etc /sys /proc/sys: nothing leaks to the host.
# The shipped unit runs with its whole sandbox; a drop-in only adds what the test needs.

SYSTEMD = next(
    (p for p in (Path("/lib/systemd/systemd"), Path("/usr/lib/systemd/systemd")) if p.is_file()),
    None,
)
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")
BOOT_SECONDS, READY_SECONDS, STOP_SECONDS, WATCHDOG_SEC = 20.0, 20.0, 5.0, 4
METRICS_PORT = 8491  # inside the test's own network namespace: no clash with the host

INNER = r"""#!/bin/sh
set -e
STAGE=$1
mount --make-rprivate /
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/systemd/system /run/amulet-test
cp -r "$STAGE/units/." /run/systemd/system/
cp -r "$STAGE/payload/." /run/amulet-test/
chmod -R a+rX /run/amulet-test
KEEP=$(cat "$STAGE/keep")  # a clone and venv under /tmp or /var stay visible
i=0; for p in $KEEP; do
  mkdir -p "/run/amulet-keep/$i" && mount --rbind "$p" "/run/amulet-keep/$i"; i=$((i+1))
done
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /var
i=0; for p in $KEEP; do
  mkdir -p "$p" && mount --move "/run/amulet-keep/$i" "$p"; i=$((i+1))
done
mkdir -p /var/lib /var/log /var/cache /var/tmp && chmod 1777 /var/tmp && ln -s /run /var/run
mount -t tmpfs -o mode=755 tmpfs /dev
mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8; mknod -m 666 /dev/urandom c 1 9; mknod -m 666 /dev/tty c 5 0
mkdir /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts && ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs /dev/shm && ln -s /proc/self/fd /dev/fd
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
for c in CONTROLLERS; do
  mkdir /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
done
mkdir /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
mkdir /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
mount --bind /etc /etc && mount -o remount,bind,ro /etc
export container=amulet-test
exec SYSTEMD --unit=amulet-test.target --log-target=null --show-status=no
"""


def _hybrid_cgroups() -> dict[str, Path] | None:
    """Hierarchy name -> the test's own cgroup directory, for the v1 + unified layout only."""
    dirs: dict[str, Path] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctl, path = line.split(":", 2)
        name = "unified" if ctl == "" else ctl.removeprefix("name=")
        dirs[name] = Path("/sys/fs/cgroup", name) / path.lstrip("/")
    wanted = {*V1_CONTROLLERS, "systemd", "unified"}
    if set(dirs) != wanted or not all(d.is_dir() for d in dirs.values()):
        return None
    return dirs


def _boot_reason() -> str | None:
    """Why systemd cannot be booted here, or None."""
    if Path("/run/systemd/system").is_dir():
        return "PID 1 is systemd here: install the unit for real instead (docs/systemd.md)"
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root (mounts, cgroups)"
    for tool in ("unshare", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if SYSTEMD is None:
        return "/lib/systemd/systemd is not installed (Debian package `systemd`)"
    if _hybrid_cgroups() is None:
        return "only the cgroup v1 + unified (hybrid) layout is handled, and this is not it"
    return None


class NamespacedSystemd:
    """systemd as PID 1 of private namespaces; `ctl(...)` runs systemctl inside them."""

    def __init__(self, stage: Path) -> None:
        dirs = _hybrid_cgroups()
        assert dirs is not None and SYSTEMD is not None
        name = f"amulet-sdtest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.cgroups = [d / name for d in dirs.values()]
        self.pid = 0
        self.boot_log = stage / "boot.log"
        for d in self.cgroups:
            d.mkdir()
            for f in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset child starts empty
                if (d / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((d.parent / f).read_text())
        inner = stage / "inner.sh"
        inner.write_text(
            INNER.replace("CONTROLLERS", " ".join(V1_CONTROLLERS)).replace("SYSTEMD", str(SYSTEMD))
        )
        inner.chmod(0o755)
        moves = "".join(f'echo $$ > "{d}/cgroup.procs"; ' for d in self.cgroups)
        self.proc = subprocess.Popen(
            [
                "sh",
                "-c",
                f"{moves}exec unshare --pid --fork --mount --cgroup --uts --ipc --net "
                f"--propagation private --mount-proc {inner} {stage}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.boot_log.open("w"),
            start_new_session=True,
        )
        try:
            self.pid = self._pid1()
        except BaseException:
            self.close()
            raise

    def _pid1(self) -> int:
        """The host pid of the namespaces' PID 1 (unshare's child), once systemctl reaches it."""
        deadline = time.monotonic() + BOOT_SECONDS
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"systemd did not boot: {self.boot_log.read_text()}"
            self.pid = self._child()
            if self.pid and self.ctl("is-system-running").stdout.strip() not in ("", "offline"):
                return self.pid
            time.sleep(0.2)
        raise AssertionError("systemd did not come up in the namespaces")

    def _child(self) -> int:
        """unshare's child (PID 1 inside), or 0 before it exists."""
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        found = kids.read_text().split() if kids.exists() else []
        return int(found[0]) if found else 0

    def run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        """A command inside the namespaces."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-n", "-u", "-i", *cmd],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def logs(self) -> str:
        """The end of the daemon's stdout and stderr (StandardOutput=/StandardError= files)."""
        return self.run("sh", "-c", "cat /run/amulet-test/*.log").stdout[-3000:]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args)

    def show(self, unit: str) -> dict[str, str]:
        out = self.ctl("show", unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def close(self) -> None:
        """`systemctl exit`, else SIGKILL to PID 1 (ends the pid namespace); remove the cgroups."""
        if self.proc.poll() is None:
            self.pid = self.pid or self._child()
            if self.pid:
                self.ctl("exit", "0")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid or self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for d in self.cgroups:
            dirs = sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for sub in [*dirs, d]:
                for _ in range(50):  # the last processes may take a moment to leave
                    try:
                        sub.rmdir()
                        break
                    except OSError:
                        time.sleep(0.1)


def _stage(tmp: Path) -> Path:
    """Units (the shipped one, a test drop-in, a target) and the daemon's config and wav."""
    stage = tmp / "stage"
    units, payload = stage / "units", stage / "payload"
    (units / "amulet-stream.service.d").mkdir(parents=True)
    payload.mkdir()
    script = Path(sys.prefix) / "bin" / "amulet-stream"
    text = UNIT.read_text().replace(
        "ExecStart=/usr/local/bin/amulet-stream run --config /etc/amulet-stream/amulet-stream.toml",
        f"ExecStart={script} run --config /run/amulet-test/amulet-stream.toml",
    )
    assert str(script) in text
    (units / "amulet-stream.service").write_text(text)
    (units / "amulet-test.target").write_text(
        "[Unit]\nDescription=amulet-stream under systemd\nDefaultDependencies=no\n"
        "Wants=amulet-stream.service\n"
    )
    for masked in ("network-online.target", "sound.target"):
        (units / masked).symlink_to("/dev/null")
    dropin = [
        "[Unit]",
        "DefaultDependencies=no",
        "[Service]",
        f"WatchdogSec={WATCHDOG_SEC}",
        "StandardOutput=append:/run/amulet-test/stdout.log",
        "StandardError=append:/run/amulet-test/stderr.log",
    ]
    used = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), ROOT}
    used = {p for p in used if not any(q in p.parents for q in used)}  # the outermost
    in_home = [p for p in used if p.parts[1:2] in (("root",), ("home",))]
    in_tmp = [p for p in used if p.parts[1:2] in (("tmp",), ("var",))]
    # the namespaces get a tmpfs /tmp and /var: a clone there is carried over (inner.sh)
    (stage / "keep").write_text("".join(f"{p}\n" for p in in_tmp))
    if in_home:  # ProtectHome=yes hides this Python; a real install lives in /opt
        dropin.append("ProtectHome=tmpfs")
    if in_home or in_tmp:  # ... and PrivateTmp=yes a clone under /tmp: bound into the unit
        dropin.append("BindReadOnlyPaths=" + " ".join(map(str, sorted(in_home + in_tmp))))
    (units / "amulet-stream.service.d" / "test.conf").write_text("\n".join(dropin) + "\n")
    from amulet_stream.audio.wav_write import write_wav
    from amulet_stream.synth.motor import generate

    write_wav(payload / "m1.wav", generate(30.0, 16000, seed=1), 16000)
    (payload / "amulet-stream.toml").write_text(
        f'[metrics]\nlisten = "127.0.0.1:{METRICS_PORT}"\n\n'
        '[[stream]]\nid = "m1"\nkind = "file"\npath = "/run/amulet-test/m1.wav"\nrealtime = true\n'
    )
    return stage


def _proc_field(status: str, key: str) -> str:
    """A field of /proc/PID/status."""
    m = re.search(rf"^{key}:\s*(.*)$", status, re.MULTILINE)
    assert m, f"{key} not in /proc/PID/status"
    return m.group(1)


def _wait_active(sd: NamespacedSystemd, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        s = sd.show("amulet-stream.service")
        if s.get("ActiveState") == "active" or time.monotonic() > deadline:
            return s
        if s.get("ActiveState") == "failed":
            return s
        time.sleep(0.2)


def test_unit_runs_under_a_real_systemd(tmp_path: Path) -> None:
    reason = _boot_reason()
    if reason:
        pytest.skip(reason)
    sd = NamespacedSystemd(_stage(tmp_path))
    try:
        # Type=notify: active only after READY=1
        s = _wait_active(sd, READY_SECONDS)
        assert (s["ActiveState"], s["SubState"]) == ("active", "running"), (s, sd.logs())
        assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
        assert s["StatusText"], "no STATUS= reached systemd"
        pid = s["MainPID"]
        # a dynamic non-root user holding the audio group
        status = sd.run("cat", f"/proc/{pid}/status").stdout
        uid = int(_proc_field(status, "Uid").split()[0])
        groups = _proc_field(status, "Groups").split()
        assert uid != 0
        assert str(grp.getgrnam("audio").gr_gid) in groups
        # the metrics listener binds 127.0.0.1 and process_* metrics survive the sandbox
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        fetch = f"import urllib.request as u; print(u.urlopen('{url}', timeout=5).read().decode())"
        metrics = sd.run(sys.executable, "-c", fetch)
        assert metrics.returncode == 0, (metrics.stderr, sd.logs())
        assert "process_resident_memory_bytes" in metrics.stdout
        assert "process_start_time_seconds" in metrics.stdout
        # WATCHDOG=1 reaches systemd and keeps the service alive past WatchdogSec
        first = int(s["WatchdogTimestampMonotonic"])
        time.sleep(WATCHDOG_SEC + 1.5)
        s = sd.show("amulet-stream.service")
        assert (s["ActiveState"], s["MainPID"], s["NRestarts"]) == ("active", pid, "0"), sd.logs()
        assert int(s["WatchdogTimestampMonotonic"]) > first
        # reload = SIGHUP: same process, still active
        r = sd.ctl("reload", "amulet-stream.service")
        assert r.returncode == 0, r.stderr
        s = _wait_active(sd, 10.0)
        assert (s["ActiveState"], s["MainPID"], s["NRestarts"]) == ("active", pid, "0"), sd.logs()
        # stop = SIGTERM: exit 0 within 5 s
        t0 = time.monotonic()
        r = sd.ctl("stop", "amulet-stream.service")
        took = time.monotonic() - t0
        s = sd.show("amulet-stream.service")
        assert r.returncode == 0, r.stderr
        assert (s["Result"], s["ExecMainCode"], s["ExecMainStatus"]) == ("success", "1", "0"), (
            s,
            sd.logs(),
        )
        assert took < STOP_SECONDS
        # windows were scored inside the sandbox (onnxruntime under the system call filter)
        out = sd.run("cat", "/run/amulet-test/stdout.log").stdout
        err = sd.run("cat", "/run/amulet-test/stderr.log").stdout
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert any(r.get("stream") == "m1" and r.get("event") == "normal" for r in records), (
            out[-2000:],
            err,
        )
        assert "pthread_setaffinity_np" not in err, err  # @resources is filtered: fixed threads
    finally:
        sd.close()
