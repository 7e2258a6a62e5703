"""Has the scene drifted from what the bundle was trained on? A rolling mean of the sender's payload sizes.

An entropy-coded bundle spends more bytes on frames unlike its training images; its manifest says what it
spends on its own test images (``coding.bytes_mean``). The sender (:mod:`cae_edge.device.sender`) feeds every
payload size to a :class:`DriftWatch` and logs each change of its verdict::

    payload sizes ─► last ``window`` (deque, running sum) ─► mean > factor × bytes_mean ─► warning (once)
                                                           └► mean < 0.9 × that ─────────► cleared (once)

Fixed-size payloads (int8 bundles) carry no such signal and are not watched.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DRIFT_FACTOR = 1.3
"""Default factor over the bundle's typical payload. Measured with ``mnist-hq`` (typical 73.5 B), 200 frames
each: real MNIST test digits 1.02×, Fashion-MNIST 1.19×, windows of the held-out photographs seen as a scene
(grayscale, no inversion) 1.39×."""
DRIFT_WINDOW = 100
"""Default number of payloads in the rolling mean."""
DRIFT_CLEAR = 0.9
"""A warning clears when the recent mean falls under this share of the threshold (no flapping)."""


class DriftWatch:
    """Rolling mean of payload sizes against the bundle's typical size: has the scene drifted?

    An entropy-coded bundle's payloads grow when the frames are unlike what it was trained on (a digit
    bundle fed a room, a street); the manifest's ``coding.bytes_mean`` is the size on its own test images.
    :meth:`add` takes each payload size and returns a line when the verdict changes: the warning when the
    mean of the last ``window`` sizes exceeds ``factor ×`` typical (once the window is full), the all-clear
    when it falls back under :data:`DRIFT_CLEAR` of that threshold.
    """

    def __init__(
        self,
        typical_bytes: float,
        *,
        factor: float = DRIFT_FACTOR,
        window: int = DRIFT_WINDOW,
        bundle: str = "the bundle",
        trained_on: str = "",
    ) -> None:
        if not typical_bytes > 0:
            raise ConfigError(f"typical payload {typical_bytes!r} B: must be > 0 (the bundle's bytes_mean)")
        self.typical, self.factor, self.window = float(typical_bytes), float(factor), int(window)
        self.bundle, self.trained_on = bundle, trained_on
        self._sizes: deque[int] = deque(maxlen=self.window)
        self._sum = 0
        self.warning: str | None = None
        """The current warning, ``None`` while payloads are of the usual size."""
        self.warnings = 0
        """Times the warning came on."""

    @classmethod
    def for_bundle(
        cls, bundle: Any, factor: float = DRIFT_FACTOR, window: int = DRIFT_WINDOW, tiles: int = 1
    ) -> DriftWatch | None:
        """The watch for a loaded bundle (:class:`~cae_edge.device.bundle.Bundle`), or ``None``: no
        ``coding.bytes_mean`` (fixed-size int8 payloads) or ``factor`` 0. With ``tiles`` N > 1 a payload
        holds N*N tiles: the typical size is N*N tiles plus the grid (2 bytes) and a length byte per tile
        (:mod:`cae_edge.tiles`)."""
        typical = (bundle.coding or {}).get("bytes_mean")
        if not factor or not typical:
            return None
        if tiles > 1:
            typical = tiles * tiles * (float(typical) + 1) + 2
        path = getattr(bundle, "path", None)
        dataset = (bundle.manifest.get("dataset") or {}) if hasattr(bundle, "manifest") else {}
        return cls(
            float(typical),
            factor=factor,
            window=window,
            bundle=f"bundle {Path(path).name}" if path else "the bundle",
            trained_on=str(dataset.get("name") or ""),
        )

    @property
    def mean(self) -> float:
        """Mean payload size over the window so far (0 before the first frame)."""
        return self._sum / len(self._sizes) if self._sizes else 0.0

    def add(self, size: int) -> str | None:
        """Count one payload of ``size`` bytes; a line to log when the verdict changed, else ``None``."""
        sizes = self._sizes
        if len(sizes) == self.window:
            self._sum -= sizes[0]
        sizes.append(size)
        self._sum += size
        mean = self._sum / len(sizes)
        limit = self.factor * self.typical
        if self.warning is None:
            if len(sizes) == self.window and mean > limit:
                self.warnings += 1
                self.warning = self._message(mean)
                return self.warning
        elif mean < DRIFT_CLEAR * limit:
            self.warning = None
            return (
                f"payloads back to {mean:.1f} B on average ({mean / self.typical:.1f}× {self.bundle}'s "
                f"typical {self.typical:.1f} B): drift warning cleared"
            )
        return None

    def _message(self, mean: float) -> str:
        seen = f" ({self.trained_on})" if self.trained_on else ""
        other = "" if self.trained_on == "scenes" else "a scenes bundle or "
        return (
            f"payloads average {mean:.1f} B, {mean / self.typical:.1f}× {self.bundle}'s typical "
            f"{self.typical:.1f} B: the scene differs from what {self.bundle} was trained on{seen}; "
            f"consider {other}`cae-edge train --dataset` on your own frames "
            "(`stream send --save-inputs DIR` records them)"
        )
