"""Fuzzing the config loader and the command line (issue 9: no traceback for any mistake).

In-process: TOML configs with every key wrong (wrong types, out-of-range and huge numbers,
NaN and infinities, unknown keys and sections, tables where values belong and back, huge
strings, NUL bytes, odd paths) and byte-mutated configs go through `config.load`: it returns
a Config or raises ConfigError whose one-line message names the file; nothing else escapes.
Through the real `amulet-stream` executable: argv mutations of replay, run, record and info,
each with a timeout: no traceback, an exit code of the documented set (README: 0 1 2 3), and
exit 2 comes with an `amulet-stream: error:` line. Time budget: AMULET_FUZZ_SECONDS (default
10 s for the loader; 20 s for the command line, at least 24 and at most 60 inputs, no cap
when the variable is set); AMULET_FUZZ_SEED picks the command-line mutations (default 9).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from amulet_stream.audio.wav import MAX_CHANNELS, RATES
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.service.config import Config, load
from amulet_stream.service.config_keys import TYPES, ConfigError
from amulet_stream.synth.motor import generate

from .fuzzing import fuzz_seconds, run_budget

BIN = Path(sys.executable).parent / "amulet-stream"
ROOT = Path(__file__).resolve().parents[1]
EXIT_CODES = {0, 1, 2, 3}
"""README: 0 ok, 1 anomaly with --fail-on-anomaly, 2 bad usage or input, 3 run gave up."""


# -- TOML documents -------------------------------------------------------------------------


class Raw(str):
    """A TOML value written as is (nan, inf, a datetime)."""


def toml_value(v: Any) -> str:
    """One TOML value, inline."""
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):  # JSON escapes are TOML escapes; TOML also wants DEL escaped
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
        )
    raise TypeError(type(v))


def toml_doc(doc: dict[str, Any]) -> str:
    """A document of top-level keys, every value inline (tables as inline tables)."""
    return "".join(f"{toml_value(str(k))} = {toml_value(v)}\n" for k, v in doc.items())


HUGE = "x" * 20_000
STRINGS = st.one_of(
    st.text(max_size=24),
    st.sampled_from(
        [
            "", " ", "~", "~nobody-here/x", "/dev/zero", "/", "..", "/proc/self/mem", "\0",
            "a\0b", "\x7f", "/tmp/" + "n" * 300, HUGE, "+#/", "127.0.0.1:99999", ":",
            "[::1]:8491", "localhost:http", ":0", "0", "-1", "device", "stdin", "file",
            "motor-1", "é/ü", "C:\\model.onnx", "models/default.onnx",
        ]
    ),
)  # fmt: skip
INTS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from(
        [-(2**63), -1, 0, 1, 2, 3, 255, 256, 257, 999, 1000, 16000, 65535, 65536, 768000,
         768001, 2**31, 2**63 - 1, 10**30]
    ),
)  # fmt: skip
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 0.0005, 0.001, 0.5, 1.0, 60.0, 60.0001, 3600.0,
                     1e300, math.nan, math.inf, -math.inf]),
)  # fmt: skip
SCALARS = st.one_of(
    STRINGS,
    INTS,
    FLOATS,
    st.booleans(),
    st.just(Raw("1979-05-27T07:32:00Z")),
    st.just(Raw("07:32:00")),
)
ANY = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


BY_TYPE: dict[type, st.SearchStrategy[Any]] = {
    bool: st.booleans(),
    int: INTS,
    float: FLOATS,
    str: STRINGS,
}
PATHS = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        ["", " ", "\0", "a\0b", "~", "~nobody-here/x", "/dev/zero", "/dev/null", "/", "..",
         "/tmp/" + "n" * 300, "n" * 5000, HUGE, "models/default.onnx", "é/ü", "x", "\n"]
    ),
)  # fmt: skip
PATH_KEYS = {"path", "model", "folder", "state_dir", "password_file", "ca_file", "cert_file",
             "key_file"}  # fmt: skip
ADDRESSES = st.one_of(
    STRINGS,
    st.sampled_from(["127.0.0.1:0", "127.0.0.1:99999", "[::1]:8491", ":8491", "8491", "x:-1",
                     "a b:80", "/x:80", "host:", "host:٣"]),
)  # fmt: skip
NAMES = st.integers(0, 4)
"""How many keys a table has."""
EXTRA_KEYS = ["k", "bogus", "", "Rate", "rate ", "a\nb", "\0", "k" * 100_000]
"""Unknown keys, and 'k' (renamed to alert_seconds)."""


@st.composite
def table(draw: st.DrawFn, name: str, depth: int = 0) -> dict[str, Any]:
    """A table of section `name`: a few known keys, each mostly of its own type with edge
    values (to reach the range checks) and sometimes of any type; maybe unknown keys."""
    keys = TYPES[name]
    known = sorted(keys)
    out: dict[str, Any] = {}
    for _ in range(draw(NAMES)):
        key = draw(st.sampled_from(known))
        types = keys[key]
        if draw(st.integers(0, 7)) == 0:
            out[key] = draw(ANY)
        elif dict in types:
            out[key] = draw(table("detector", depth + 1)) if depth == 0 else {}
        elif key in PATH_KEYS:
            out[key] = draw(PATHS)
        elif key == "listen":
            out[key] = draw(ADDRESSES)
        else:
            out[key] = draw(BY_TYPE[draw(st.sampled_from(types))])
    if draw(st.integers(0, 7)) == 0:
        out[draw(st.sampled_from(EXTRA_KEYS))] = draw(ANY)
    return out


IDS = st.one_of(st.sampled_from(["m1", "m2", "pump-3", "a+b", "", "x" * 65]), STRINGS, ANY)


@st.composite
def stream_table(draw: st.DrawFn) -> dict[str, Any]:
    """A [[stream]] table, usually with an id (valid or not)."""
    out = draw(table("stream"))
    if draw(st.integers(0, 5)) > 0:
        out["id"] = draw(IDS)
    return out


SECTIONS = [n for n in TYPES if n != "stream"]


@st.composite
def config_doc(draw: st.DrawFn) -> dict[str, Any]:
    """A config document: some sections, each maybe of the wrong shape, maybe unknown ones."""
    doc: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(SECTIONS))
        doc[name] = draw(ANY) if draw(st.integers(0, 9)) == 0 else draw(table(name))
    shape = draw(st.integers(0, 9))
    if shape < 5:
        doc["stream"] = [draw(stream_table()) for _ in range(draw(st.integers(0, 3)))]
    elif shape == 5:
        doc["stream"] = draw(st.one_of(stream_table(), ANY))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(["sources", "Source", "", "daemon.x", "a\nb", "s" * 50_000]))] = (
            draw(ANY)
        )
    return doc


MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 4000),
              st.binary(min_size=1, max_size=6)),
    max_size=3,
)  # fmt: skip


def mutate(raw: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    """Byte mutations of a serialized config: a flipped byte, a cut, inserted or deleted bytes."""
    for kind, at, blob in ops:
        at %= len(raw) + 1
        if kind == "flip" and at < len(raw):
            raw = raw[:at] + bytes([raw[at] ^ (blob[0] or 1)]) + raw[at + 1 :]
        elif kind == "cut":
            raw = raw[:at]
        elif kind == "insert":
            raw = raw[:at] + blob + raw[at:]
        elif kind == "delete":
            raw = raw[:at] + raw[at + len(blob) :]
    return raw


MAX_MESSAGE = 1000
"""Characters of a ConfigError after the file name: one readable line, however long the value."""


def check_config(path: Path, raw: bytes, outcomes: dict[str, int]) -> None:
    """load() on `raw`: a sane Config, or a ConfigError of one line naming the file."""
    path.write_bytes(raw)
    path.chmod(0o600)
    try:
        cfg = load(path)
    except ConfigError as err:
        text = str(err)
        assert text.startswith(f"{path}: "), text[:300]
        assert "\n" not in text and "Traceback" not in text, text[:300]
        assert len(text) <= len(str(path)) + MAX_MESSAGE, text[:300]
        outcomes["refused"] += 1
        return
    assert isinstance(cfg, Config)
    for s in cfg.all_streams():
        src = s.source
        assert src.rate is None or RATES[0] <= src.rate <= RATES[1]
        assert src.channels is None or 1 <= src.channels <= MAX_CHANNELS
        assert src.channel is None or 0 <= src.channel < MAX_CHANNELS
        assert 1 <= s.model.threads <= 256
        assert s.model.hop is None or 0.001 <= s.model.hop <= 60
        for p in (src.path, s.model.path):
            assert p is None or p.is_absolute()
    assert 0 < cfg.metrics.submit_limit_mb <= 1024
    outcomes["ok"] += 1


# Found by this fuzzer or by hand, kept as regression cases: each must give ConfigError.
REGRESSIONS: dict[str, str | bytes] = {
    "NUL byte in a path": '[model]\npath = "a\\u0000b"\n',
    "NUL byte in a stream's model": '[[stream]]\nid = "m"\nkind = "stdin"\nrate = 16000\n'
    'model = "\\u0000"\n',
    "NUL byte in state_dir (fuzzer)": '[daemon]\nstate_dir = "\\u0000"\n',
    "empty state_dir": '[daemon]\nstate_dir = ""\n',
    "state_dir is a file": '[daemon]\nstate_dir = "/dev/null"\n',
    "name too long in state_dir": f'[daemon]\nstate_dir = "/tmp/{"n" * 300}"\n',
    "state_dir of 5000 characters (fuzzer)": f'[daemon]\nstate_dir = "{"n" * 5000}"\n',
    "unknown key of 100 000 characters": f'[source]\n"{"k" * 100_000}" = 1\n',
    "unknown key with a newline (a message of two lines)": '[source]\n"a\\nb" = 1\n',
    "unknown section with a newline": '["a\\nb"]\nx = 1\n',
    "submit_limit_mb nan (int(nan) in the listener)": "[metrics]\nsubmit_limit_mb = nan\n",
    "submit_limit_mb inf": "[metrics]\nsubmit_limit_mb = inf\n",
    "submit_limit_mb negative": "[metrics]\nsubmit_limit_mb = -1\n",
    "listen port out of range": '[metrics]\nlisten = "127.0.0.1:99999"\n',
    "listen without port": '[metrics]\nlisten = "localhost"\n',
    "rate of 1 GHz (a 40 GB ring buffer)": '[source]\nkind = "stdin"\nrate = 1000000000\n',
    "100000 channels": "[source]\nchannels = 100000\n",
    "channel 100000": "[source]\nchannel = 100000\n",
    "5000 threads (start hung)": "[model]\nthreads = 5000\n",
    "device on a stdin source": '[source]\nkind = "stdin"\nrate = 16000\ndevice = "USB"\n',
    "negative device index": "[source]\ndevice = -1\n",
    "hop 0": "[model]\nhop = 0\n",
    "hop nan": "[model]\nhop = nan\n",
    "sensitivity nan": "[detector]\nsensitivity = nan\n",
    "streams as a table": '[stream]\nid = "m"\n',
    "section as a value": "source = 3\n",
    "unknown section": "[sources]\nrate = 1\n",
    "huge string as a stream id": f'[[stream]]\nid = "{"x" * 100_000}"\n',
    "datetime as a number": "[model]\nthreads = 1979-05-27T07:32:00Z\n",
    "not UTF-8": b'[source]\nstream = "\xff\xfe"\n',
    "not TOML": "[source\n",
}


@pytest.mark.parametrize("name", REGRESSIONS)
def test_config_regressions_are_refused(name: str, tmp_path: Path) -> None:
    body = REGRESSIONS[name]
    raw = body if isinstance(body, bytes) else body.encode()
    outcomes = {"ok": 0, "refused": 0}
    check_config(tmp_path / "c.toml", raw, outcomes)
    assert outcomes == {"ok": 0, "refused": 1}, name


def test_config_files_that_are_no_config_files(tmp_path: Path) -> None:
    for path, words in (
        (Path("/dev/zero"), "not a regular file"),
        (tmp_path, "cannot read: Is a directory"),
        (tmp_path / "missing.toml", "cannot read: No such file"),
        (Path(sys.executable).resolve(), "not a text file"),
    ):
        with pytest.raises(ConfigError, match=words):
            load(path)
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    big.chmod(0o600)
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load(big)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo, 0o600)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="not a regular file"):
        load(fifo)  # refused at once, not waiting for a writer
    assert time.monotonic() - t0 < 1.0


def test_fuzz_config_loader(tmp_path: Path, record_property: Any) -> None:
    outcomes = {"ok": 0, "refused": 0}
    path = tmp_path / "fuzz.toml"

    def check(case: tuple[dict[str, Any], list[tuple[str, int, bytes]]]) -> None:
        doc, ops = case
        check_config(path, mutate(toml_doc(doc).encode(), ops), outcomes)

    n = run_budget(fuzz_seconds(10.0), 100, st.tuples(config_doc(), MUTATIONS), check)
    print(f"fuzz config loader: {n} inputs, 0 failures ({outcomes['ok']} loaded, "
          f"{outcomes['refused']} refused with ConfigError)")  # fmt: skip
    record_property("fuzz_config_inputs", n)
    assert n >= 100 and outcomes["refused"] > 0


# -- the command line -----------------------------------------------------------------------

BAD_VALUES = [
    "0", "-1", "-5", "nan", "inf", "-inf", "1e-300", "1e300", "99999", "", " ", "abc",
    "127.0.0.1:99999", ":", "/nonexistent/x.png", "/bin/ls", "/dev/zero", "x.txt", "\x7f",
    "1000000000", "5000", "0.0001", "300", "--", "-", "a b", "é",
]  # fmt: skip
FLAGS = [
    "--hop", "--threads", "--channel", "--channels", "--rate", "--duration", "--buffer",
    "--speed", "--sensitivity", "--alert-seconds", "--within-seconds", "--burst-ratio",
    "--burst-seconds", "--clear-seconds", "--metrics", "--mqtt", "--plot", "--config",
    "--model", "--stream", "--device", "--state-dir", "--format", "--source", "--seconds",
    "-o", "--k", "--n", "--clear",
]  # fmt: skip
SWITCHES = ["--scores", "-q", "--realtime", "--fail-on-anomaly", "--demo", "--http-submit",
            "--force", "--version", "--help", "--bogus"]  # fmt: skip


MIN_CLI_INPUTS = 24
"""Tried even when a loaded machine makes them outlast the time budget."""


def base_argvs(d: Path, wav: Path) -> list[list[str]]:
    """Valid command lines the mutations start from (each ends within a few seconds)."""
    return [
        ["replay", str(wav), "-q"],
        ["replay", str(wav), "--scores", "--hop", "0.5", "-q"],
        ["replay", str(wav), "--format", "amulet-json", "--threads", "2", "-q"],
        ["replay", str(wav), "--metrics", "127.0.0.1:0", "--state-dir", str(d / "state"), "-q"],
        ["run", "--source", "stdin", "--rate", "16000", "--duration", "1", "-q"],
        ["record", "--source", "stdin", "--rate", "16000", "--seconds", "1", "-o", str(d / "r")],
        ["info", str(ROOT / "models" / "default.onnx")],
    ]  # fmt: skip


def mutate_argv(argv: list[str], rng: random.Random) -> list[str]:
    """1 to 3 mutations: a flag's value replaced, a flag added with a bad value, a token
    dropped, duplicated or replaced by a switch."""
    out = list(argv)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        flags = [i for i, a in enumerate(out) if a.startswith("-") and i + 1 < len(out)]
        if op == 0 and flags:
            out[rng.choice(flags) + 1] = rng.choice(BAD_VALUES)
        elif op in (0, 1):
            at = rng.randint(1, len(out))
            out[at:at] = [rng.choice(FLAGS), rng.choice(BAD_VALUES)]
        elif op == 2 and len(out) > 1:
            del out[rng.randrange(1, len(out))]
        elif op == 3:
            at = rng.randrange(len(out))
            out.insert(at, out[at])
        else:
            out.insert(rng.randint(1, len(out)), rng.choice(SWITCHES))
    # a paced replay slower than real time is a legitimate long run: keep the fuzz bounded
    return [("2" if a in ("0.01", "1e-300") and i and out[i - 1] == "--speed" else a)
            for i, a in enumerate(out)]  # fmt: skip


def run_cli(argv: list[str], cwd: Path) -> tuple[list[str], int, str]:
    """`amulet-stream ARGV` with stdin at its end; (argv, exit code, stderr)."""
    try:
        proc = subprocess.run(
            [BIN, *argv], capture_output=True, text=True, stdin=subprocess.DEVNULL,
            timeout=60, check=False, cwd=cwd, errors="replace",
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return argv, -1, "hung for 60 s"
    return argv, proc.returncode, proc.stderr


def cli_problem(rc: int, err: str) -> str | None:
    """What is wrong with an outcome, or None."""
    if "Traceback" in err or rc not in EXIT_CODES:
        return f"exit {rc}: {err[-600:]}"
    if rc == 2 and "amulet-stream: error: " not in err:
        return f"exit 2 without an error line: {err[-600:]}"
    if any(not line.startswith(("amulet-stream", "usage:", " ")) for line in err.splitlines()):
        # --help prints usage on stdout; anything else on stderr is ours, one line each
        return f"a stderr line not from amulet-stream: {err[-600:]}"
    return None


def test_fuzz_command_line(tmp_path: Path, record_property: Any) -> None:
    wav = tmp_path / "motor.wav"
    write_wav(wav, generate(1.5, 16000, seed=3), 16000)
    seed = int(os.environ.get("AMULET_FUZZ_SEED", "9"))
    rng = random.Random(seed)
    budget = fuzz_seconds(20.0)
    cap = None if "AMULET_FUZZ_SECONDS" in os.environ else 60
    bases = base_argvs(tmp_path, wav)
    failures: list[str] = []
    n = 0
    stop = time.monotonic() + budget
    with ThreadPoolExecutor(max_workers=3) as pool:
        while (time.monotonic() < stop or n < MIN_CLI_INPUTS) and (cap is None or n < cap):
            argvs = [mutate_argv(rng.choice(bases), rng) for _ in range(6)]
            for argv, rc, err in pool.map(lambda a: run_cli(a, tmp_path), argvs):
                n += 1
                problem = cli_problem(rc, err)
                if problem:
                    failures.append(f"{argv}: {problem}")
    print(f"fuzz command line: {n} inputs (seed {seed}), {len(failures)} failures")
    record_property("fuzz_cli_inputs", n)
    assert not failures, "\n".join(failures[:5])


def test_a_datetime_is_not_a_number(tmp_path: Path) -> None:
    """TOML dates load as datetime objects: refused by type like any other wrong type."""
    path = tmp_path / "c.toml"
    path.write_text("[daemon]\nstall_seconds = 2024-01-01\n")
    path.chmod(0o600)
    want = f"daemon.stall_seconds must be int or float, got {datetime.date(2024, 1, 1)!r}"
    with pytest.raises(ConfigError, match=re.escape(want)):
        load(path)
