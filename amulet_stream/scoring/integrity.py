"""Input integrity: silence, dropouts, clipping, DC offset and level of the source's mono audio,
judged in 0.25 s blocks apart from (and before) the model."""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from amulet_stream.scoring.dropouts import ZeroRuns
from amulet_stream.scoring.levels import BLOCK_SECONDS, CHUNK, Blocker, block_size, measure

_LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

REASONS = (
    "non_finite",
    "rate",
    "silence",
    "dropout",
    "clipping",
    "dc_offset",
    "level_low",
    "level_high",
)
"""Input problems, highest priority first: when several hold, the first one is reported."""
_SPANS = 4096
"""Troubled block spans kept for troubled(): old ones are forgotten beyond this many."""


@dataclass(frozen=True)
class IntegritySettings:
    """Limits of the input checks; the defaults come from the measurements in the report."""

    silence_dbfs: float = -80.0
    """Block RMS below this (dBFS) is silence: digital zeros or an idle input's noise floor."""
    clip_fraction: float = 0.001
    """Fraction of a block's samples at |x| >= 0.999 above which the block is clipped."""
    dc_offset: float = 0.02
    """|mean| of a block, as a fraction of full scale, above which it has a DC offset."""
    dropout_ms: float = 20.0
    """A run of exact zeros this long (ms) inside audio is a dropout."""
    level_margin_db: float = 20.0
    """Block RMS this far (dB) below p1 / above p99 of the model's training audio is off-level."""
    problem_seconds: float = 1.0
    """A condition must hold this long (s of audio, consecutive blocks) to raise a problem."""
    clear_seconds: float = 2.0
    """Clean audio this long (s) clears a problem."""

    def __post_init__(self) -> None:
        checks = (
            ("silence_dbfs", -200.0 < self.silence_dbfs < 0.0, "be between -200 and 0 dBFS"),
            ("clip_fraction", 0.0 < self.clip_fraction < 1.0, "be between 0 and 1"),
            ("dc_offset", 0.0 < self.dc_offset < 1.0, "be between 0 and 1 (of full scale)"),
            ("dropout_ms", 0.0 < self.dropout_ms <= 10000.0, "be between 0 and 10000 ms"),
            ("level_margin_db", 0.0 <= self.level_margin_db < 200.0, "be between 0 and 200 dB"),
            ("problem_seconds", 0.0 < self.problem_seconds <= 3600.0, "be between 0 and 3600 s"),
            ("clear_seconds", 0.0 < self.clear_seconds <= 3600.0, "be between 0 and 3600 s"),
        )
        for name, ok, rule in checks:
            if not ok:  # also False for NaN
                raise ValueError(f"{name} must {rule}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Change:
    """A change of the input's state."""

    state: str
    """'input_problem' or 'ok'."""
    reason: str | None
    """One of REASONS for input_problem, None for ok."""
    detail: str
    """Human text, e.g. 'digital zeros (RMS -120 dBFS) for 1.0 s'."""


class IntegrityCheck:
    """Judges mono float32 audio at `rate` Hz in 0.25 s analysis blocks anchored at the stream's
    first sample. Results do not depend on how the samples are split into pushes.

    Starts without a problem and announces only changes: 'input_problem' (a reason held for
    problem_seconds of consecutive blocks, or another reason replaced it), 'ok' (clean for
    clear_seconds). Blocks without a finite sample are skipped. Not thread-safe."""

    def __init__(
        self,
        rate: int,
        level_range: tuple[float, float] | None,
        settings: IntegritySettings | None = None,
    ) -> None:
        if rate < 1:
            raise ValueError(f"rate {rate} Hz must be positive")
        if level_range is not None and not level_range[0] <= level_range[1]:
            raise ValueError(f"level_range {level_range} must be (low, high) with low <= high")
        self.rate = rate
        self.level_range = level_range
        self.settings = s = settings or IntegritySettings()
        self.block = block_size(rate)
        self._need = max(1, math.ceil(s.problem_seconds / BLOCK_SECONDS - 1e-9))
        self._clear = max(1, math.ceil(s.clear_seconds / BLOCK_SECONDS - 1e-9))
        self._blocker = Blocker(self.block)
        self._zeros = ZeroRuns(max(1, round(s.dropout_ms * rate / 1000.0)))
        self._blocks = 0  # blocks judged
        self.problem: str | None = None
        """The current reason (one of REASONS), or None."""
        self.wrong_rate: str | None = None
        """Set by the feed when the source delivers far from its rate (the text says how): a
        condition of every block from now on, reason 'rate', until set back to None."""
        self.level_dbfs = -120.0
        """RMS (dBFS) of the latest judged block (-120 before the first)."""
        self.clipped = 0
        """Samples at full scale in the judged blocks."""
        self._bad = 0  # consecutive bad blocks
        self._good = 0  # consecutive good blocks while in a problem
        self._recent: deque[tuple[int, float, float, float, int]] = deque(maxlen=self._need)
        self._spans: deque[list[int]] = deque(maxlen=_SPANS)  # [first, end) troubled blocks

    @property
    def judged(self) -> int:
        """Samples judged so far (whole blocks); later samples wait for their block to fill."""
        return self._blocks * self.block

    def push(self, samples: F32) -> list[tuple[int, Change]]:
        """Add mono float32 samples of any length; return the changes with the sample index
        (from the stream start) where each takes effect: the end of the block that decided it."""
        whole = self._blocker.push(samples)
        changes: list[tuple[int, Change]] = []
        for i in range(0, whole.shape[0], CHUNK):
            changes += self._judge(whole[i : i + CHUNK])
        return changes

    def troubled(self, start: int, end: int) -> bool:
        """Whether samples [start, end) touch a block that was bad or judged while a problem
        stood; samples not yet judged count as the current state."""
        if end <= start:
            return False
        first, last = max(start, 0) // self.block, (end - 1) // self.block
        hi = min(last, self._blocks - 1)
        for a, b in reversed(self._spans):
            if b <= first:
                break
            if a <= hi:
                return True
        return last >= self._blocks and self.problem is not None

    def _judge(self, blocks: F32) -> list[tuple[int, Change]]:
        """State changes from whole blocks (nb, n)."""
        nb, s = blocks.shape[0], self.settings
        stats = measure(blocks)
        self.level_dbfs = float(stats.rms_dbfs[-1])
        self.clipped += round(float(stats.clipped @ stats.count))
        has_gap, gaps = self._zeros.gaps(blocks.reshape(-1), nb)
        db = stats.rms_dbfs
        lo, hi = self.level_range or (-math.inf, math.inf)
        cond = np.stack(
            [
                stats.nonfinite,
                np.full(nb, self.wrong_rate is not None),
                db < s.silence_dbfs,
                has_gap,
                stats.clipped > s.clip_fraction,
                np.abs(stats.mean) > s.dc_offset,
                db < lo - s.level_margin_db,
                db > hi + s.level_margin_db,
            ],
            axis=1,
        )
        top = np.where(cond.any(axis=1), cond.argmax(axis=1), -1)
        first = self._blocks
        self._blocks += nb
        if self.problem is None and self._bad == 0 and not (top >= 0).any():
            return []  # the usual case: clean audio, nothing to remember
        changes: list[tuple[int, Change]] = []
        for k in range(nb):
            mean, clipped = float(stats.mean[k]), float(stats.clipped[k])
            change = self._step((int(top[k]), float(db[k]), mean, clipped, int(gaps[k])))
            if change is not None:
                changes.append(((first + k + 1) * self.block, change))
            if top[k] >= 0 or self.problem is not None:
                self._mark(first + k)
        return changes

    def _step(self, entry: tuple[int, float, float, float, int]) -> Change | None:
        """Advance the state machine by one judged block (reason index or -1, dBFS, mean,
        clipped fraction, dropouts reached)."""
        if entry[0] < 0:
            self._bad, self._good = 0, self._good + 1
            self._recent.clear()
            if self.problem is not None and self._good >= self._clear:
                self.problem = None
                secs = self._clear * BLOCK_SECONDS
                return Change("ok", None, f"input clean for {secs:.1f} s")
            return None
        self._bad, self._good = self._bad + 1, 0
        self._recent.append(entry)
        if self._bad < self._need:
            return None
        held = [e[0] for e in self._recent]
        if self.problem is not None and REASONS.index(self.problem) in held:
            return None
        reason = REASONS[min(held)]
        if reason == self.problem:
            return None
        self.problem = reason
        return Change("input_problem", reason, self._detail(min(held)))

    def _detail(self, code: int) -> str:
        """Human text for reason REASONS[code] from the blocks that raised it."""
        rows = [e for e in self._recent if e[0] == code]
        s, secs = self.settings, self._need * BLOCK_SECONDS
        levels = sorted(e[1] for e in rows)  # the median (np.median imports numpy.ma: 20 ms)
        db = (levels[(len(levels) - 1) // 2] + levels[len(levels) // 2]) / 2.0
        name = REASONS[code]
        if name == "rate":
            return self.wrong_rate or "the source delivers at the wrong rate"
        if name == "non_finite":
            return (
                f"NaN or infinite samples for {secs:.1f} s: the source or file delivers "
                "broken data (not scored)"
            )
        if name == "silence":
            if all(e[1] <= -120.0 for e in rows):
                return f"digital zeros (RMS -120 dBFS) for {secs:.1f} s"
            return (
                f"RMS {db:.1f} dBFS, below the silence level {s.silence_dbfs:g} dBFS, for "
                f"{secs:.1f} s: no signal (input unplugged, muted or idle)"
            )
        if name == "dropout":
            n = sum(e[4] for e in self._recent)
            return (
                f"{n} gap(s) of exact zeros of {s.dropout_ms:g} ms or more in {secs:.1f} s of "
                "audio: samples are being lost"
            )
        if name == "clipping":
            pct = 100.0 * float(np.mean([e[3] for e in rows]))
            return (
                f"{pct:.2f} % of samples at full scale over {secs:.1f} s (limit "
                f"{100.0 * s.clip_fraction:g} %): the input gain is too high"
            )
        if name == "dc_offset":
            mean = float(np.mean([e[2] for e in rows]))
            return f"DC offset {mean:+.3f} of full scale for {secs:.1f} s (limit {s.dc_offset:g})"
        lo, hi = self.level_range or (0.0, 0.0)
        off = f"{lo - db:.1f} dB below" if name == "level_low" else f"{db - hi:.1f} dB above"
        return (
            f"RMS {db:.1f} dBFS for {secs:.1f} s, {off} the model's training range "
            f"{lo:.1f}..{hi:.1f} dBFS (p1..p99)"
        )

    def _mark(self, block: int) -> None:
        """Remember a troubled block for troubled()."""
        if self._spans and self._spans[-1][1] == block:
            self._spans[-1][1] = block + 1
        else:
            self._spans.append([block, block + 1])
