"""The node's end of a stream: capture → preprocess → encode → pack → send, with its statistics.

::

    FrameSource ─► Preprocessor ─► Encoder.encode ─► wire.pack ─► PushSender.send
       (capture)     (28x28 u8)      (payload)        (+24 B)      (never blocks)
                                                    (compact: +4 B
                                                     or +8 B)

With ``tiles`` N > 1 the preprocessing makes 28N x 28N frames and the encoder is a
:class:`~cae_edge.tiles.TiledEncoder`: NxN tiles, each coded with the bundle, in one packet per frame.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import wire
from ..errors import ConfigError, SourceError
from ..payload import payload_kind
from ..wire import Packet, PayloadKind
from .capture import FrameSource, open_source
from .config import MAX_FPS, MIN_FPS
from .drift import DRIFT_FACTOR, DRIFT_WINDOW, DriftWatch
from .mqtt import MqttSender, MqttSenderOptions
from .preprocess import Preprocessor
from .recording import RecordingWriter
from .sinks import PngSink
from .stream import Log, SenderLink, StageTimer, now_us
from .transport import LinkStats, PushSender, SenderOptions

SEND_STAGES = ("capture", "preprocess", "encode", "pack", "send")
"""The sender loop's timed stages, in order; each has a ``<stage>_us`` mean in :class:`SenderStats`."""
SAVE_INPUTS_FORMATS = ("recording", "png")
"""What :attr:`SendOptions.save_inputs` writes."""


@dataclass
class SendOptions:
    """What the sender loop does (the link's own settings are :class:`SenderOptions`)."""

    name: str = "node"
    """Sender name shown by the receiver (``A-Z a-z 0-9 . _ -``, at most 64); its 16-bit id goes in every
    packet, the name itself in the first packet, the first after each reconnect and about once a second."""
    fps: float = 0.0
    """Frame-rate cap; 0 = as fast as the source delivers."""
    max_frames: int = 0
    """Stop after this many frames; 0 = until the source ends or ``stop`` is set."""
    name_every_s: float = 1.0
    """Carry the name at least this often (so a restarted receiver learns it)."""
    stats_every_s: float = 1.0
    """Call ``on_stats`` this often."""
    wait_connected_s: float = 0.0
    """Before capturing, wait up to this long for a receiver (useful for files; 0 = start at once)."""
    save_inputs: Path | None = None
    """Also keep each preprocessed 28x28 input, as ``save_inputs_format`` says."""
    save_inputs_format: str = "recording"
    """``recording``: ``save_inputs`` becomes a recording directory (:mod:`cae_edge.device.recording`, as
    ``cae-edge data record`` writes: frames, capture times, ``meta.json`` with the preprocessing and this
    sender's name), which ``cae-edge train --dataset`` takes; frame ``i`` is sequence number ``i``. It is
    flushed every 100 frames or 5 s and at the end: a killed sender loses at most the last 100 frames or 5 s.
    ``png``: ``DIR/<name>/<seq>.png``, one file per frame."""
    compact: bool = False
    """Send compact frames (``cae_edge.wire``: 4 bytes of overhead on a CURVE link, 8 on ``--insecure``)
    between full *session* packets (with the name): the first, the first after each new connection, those
    made while no receiver is connected, and one every ``session_every`` frames (``name_every_s`` does not
    apply). Receivers read both formats; receivers older than compact frames refuse them (reason ``magic``):
    upgrade receivers first."""
    session_every: int = 100
    """With ``compact``: a full session packet at least every this many frames (a receiver that starts late,
    or lost a session packet, reads this sender again after at most this many)."""
    drift_factor: float = DRIFT_FACTOR
    """Entropy-coded bundles: say so (:attr:`SenderStats.drift`, one log line) when the mean payload of the
    last ``drift_window`` frames runs above this many times the bundle's typical size (its manifest's
    ``coding.bytes_mean``): a sign that the scene is not what the bundle was trained on. It clears once the
    mean is back under ``0.9 ×`` that. 0 = no watch; fixed-size (int8) payloads are never watched."""
    drift_window: int = DRIFT_WINDOW
    """Frames in the rolling mean that :attr:`drift_factor` looks at (the watch speaks once it is full)."""

    def check(self) -> None:
        """Raise :class:`ConfigError` for a bad value."""
        wire.check_sender_name(self.name)
        if not (self.fps == 0 or MIN_FPS <= self.fps <= MAX_FPS):
            raise ConfigError(
                f"fps {self.fps!r}: must be 0 (no cap) or {MIN_FPS:.6f} (one frame an hour) .. {MAX_FPS:.0f}"
            )
        if self.max_frames < 0:
            raise ConfigError(f"max frames {self.max_frames}: must be >= 0 (0 = no limit)")
        if not 1 <= self.session_every <= 10_000:
            raise ConfigError(f"session every {self.session_every}: must be 1 .. 10000 frames")
        if not (self.drift_factor == 0 or 1.0 < self.drift_factor <= 100.0):
            raise ConfigError(
                f"drift factor {self.drift_factor!r}: must be 0 (no drift watch) or > 1 .. 100, "
                f"e.g. {DRIFT_FACTOR}"
            )
        if self.save_inputs_format not in SAVE_INPUTS_FORMATS:
            raise ConfigError(
                f"save-inputs format {self.save_inputs_format!r}: must be " + " or ".join(SAVE_INPUTS_FORMATS)
            )
        if self.save_inputs_format == "recording" and self.save_inputs and Path(self.save_inputs).exists():
            raise ConfigError(
                f"--save-inputs {str(self.save_inputs)!r} already exists: give a new folder for the "
                "recording (or remove that one)"
            )
        if not 1 <= self.drift_window <= 100_000:
            raise ConfigError(f"drift window {self.drift_window}: must be 1 .. 100000 frames")


@dataclass
class SenderStats:
    """A sender's counters and timings (JSON via :meth:`to_dict`)."""

    name: str = ""
    """Sender name."""
    sender_id: int = 0
    """Its 16-bit wire id."""
    epoch: int = 0
    """This run's stream epoch (random; sent with the name so a receiver tells a restart from a gap)."""
    pair_id: str = ""
    """Bundle pair id."""
    source: str = ""
    """Where frames come from."""
    status: str = "running"
    """``running``, ``finished`` (source ended / max frames), ``stopped`` (signal) or ``source-error``."""
    error: str | None = None
    """The source error, when status is ``source-error``."""
    frames: int = 0
    """Frames captured, preprocessed, encoded and packed."""
    sent: int = 0
    """Packets handed to ZeroMQ."""
    dropped: int = 0
    """Packets dropped because the send queue was full (receiver slow or away)."""
    drops: dict[str, int] = field(default_factory=dict)
    """Packets this sender discarded, by reason: ``queue`` (queue full: receiver slow or away) and ``close``
    (still queued when the close flush gave up). Every packet made is sent or in here (or still queued)."""
    queued: int = 0
    """Packets waiting in the send queue."""
    lost_at_close: int = 0
    """Packets still queued when the sender closed and the flush time ran out."""
    connects: int = 0
    """Connections to the receiver established."""
    disconnects: int = 0
    """Connections lost."""
    connected: bool = False
    """A receiver is connected now."""
    refused: int = 0
    """Handshakes the receiver refused (this node's CURVE key is not in its allowed keys); retried."""
    elapsed_s: float = 0.0
    """Seconds since the loop started."""
    fps: float = 0.0
    """Frames per second over the whole run."""
    fps_recent: float = 0.0
    """Frames per second since the previous stats report."""
    bytes_per_frame: float = 0.0
    """Mean packet size (header + name when carried + payload + CRC), before ZeroMQ framing (+2 B on TCP)."""
    compact: int = 0
    """Frames sent as compact frames (the rest as full packets)."""
    payload_bytes: float = 0.0
    """Mean payload size."""
    payload_bytes_recent: float = 0.0
    """Mean payload size over the drift watch's window (the last ``drift_window`` frames; 0: no watch)."""
    payload_bytes_typical: float = 0.0
    """The bundle's typical payload (manifest ``coding.bytes_mean``) the drift watch compares with
    (0: no watch, e.g. fixed-size int8 payloads)."""
    drift: str | None = None
    """While payloads run well above the bundle's typical size (``drift_factor``): what that means and what
    to do; ``None`` otherwise."""
    drift_warnings: int = 0
    """Times the drift warning came on during the run."""
    escaped: int = 0
    """Latent values beyond the entropy model's alphabet met by the encoder (sent exactly through the coder's
    escape; bundles exported before escapes clamp them, so the receiver decodes a different latent)."""
    capture_us: float = 0.0
    """Mean time in ``source.read()`` (waiting for the camera included)."""
    preprocess_us: float = 0.0
    """Mean time to turn a frame into the 28x28 input."""
    encode_us: float = 0.0
    """Mean encoder time (LiteRT invoke + payload coding)."""
    pack_us: float = 0.0
    """Mean ``wire.pack`` time."""
    send_us: float = 0.0
    """Mean ``PushSender.send`` time."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def absorb(self, link: LinkStats) -> SenderStats:
        """Copy the link's counters in."""
        self.sent, self.dropped, self.queued = link.sent, link.dropped, link.queued
        self.lost_at_close = link.lost_at_close
        self.drops = {"queue": link.dropped, "close": link.lost_at_close}
        self.connects, self.disconnects, self.connected = link.connects, link.disconnects, link.peers > 0
        self.refused = link.refused
        return self

    def absorb_open(self, link: SenderLink) -> SenderStats:
        """:meth:`absorb` the link's counters unless it is closed already (then they were taken at close)."""
        if not link.closed:
            self.absorb(link.stats)
        return self

    def measure(self, frames: int, timer: StageTimer, wire_bytes: int, payload_bytes: int) -> SenderStats:
        """Set the frame count, rates, per-stage means and mean sizes from the loop's running totals."""
        self.frames = frames
        self.elapsed_s = timer.elapsed_s()
        self.fps = round(frames / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0
        for stage in SEND_STAGES:
            setattr(self, f"{stage}_us", timer.mean_us(stage, frames))
        self.bytes_per_frame = round(wire_bytes / frames, 2) if frames else 0.0
        self.payload_bytes = round(payload_bytes / frames, 2) if frames else 0.0
        return self


class Encoder(Protocol):
    """What the sender needs of an encoder: a 28x28 uint8 image in, payload bytes out."""

    def encode(self, image_u8: np.ndarray) -> bytes: ...


class _Pacer:
    """The frame-rate cap: keeps the cadence, but never bursts to catch up after a stall."""

    def __init__(self, fps: float, start: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.next = start

    def wait(self, stop: threading.Event) -> bool:
        """Wait for the next frame's turn; False when ``stop`` was set meanwhile."""
        if not self.period:
            return True
        now = time.perf_counter()
        if now < self.next and stop.wait(self.next - now):
            return False
        self.next = max(self.next + self.period, time.perf_counter() - self.period)
        return True


class _NameCadence:
    """Which packets carry the sender name: the first, the first after each new connection (the link's
    connect count is looked at every 50 ms), then one at least every ``every_s`` — and every packet made while
    no receiver is connected: those wait in the queue and reach a (possibly restarted) receiver first, so each
    must say whose it is (else an ``--insecure`` receiver files them under ``id-XXXX``; with CURVE the key
    names them anyway). Frames queued while connected are not named (the wire cost under load would grow)."""

    def __init__(self, name: str, every_s: float, link: SenderLink, start: float) -> None:
        self.name, self.every_s, self.link = name, every_s, link
        self.next_link_check = start
        self.last = -math.inf
        self.seen_connects = -1

    def __call__(self, now: float) -> str | None:
        """The name to put in a packet made at ``now``, or ``None``."""
        link = self.link
        if now >= self.next_link_check:
            self.next_link_check = now + 0.05
            connects = link.stats.connects
            if connects != self.seen_connects:
                self.seen_connects, self.last = connects, -math.inf  # new connection: say who we are
        offline = not getattr(link, "online", True)  # as of the link's last look: no socket poll here
        if offline or now - self.last >= self.every_s:
            self.last = now
            return self.name
        return None


class _CompactCadence:
    """Which frames go compact (``SendOptions.compact``): all but the session packets — full, named packets
    when the name cadence asks for the name, after the link dropped a packet, or when the frame is past what a
    compact frame can say against the session (``session_every`` frames, a clock step)."""

    def __init__(self, link: SenderLink, session_every: int, name: str) -> None:
        self.session_every, self.name = session_every, name
        self.check = not getattr(link, "authenticates_messages", False)
        self.with_id = not getattr(link, "identifies_sender", False)
        self.session: Packet | None = None
        self.pending: Packet | None = None
        self.frames = 0

    def pack(self, p: Packet, name: str | None, epoch: int) -> bytes:
        """``p`` (no name) on the wire: compact against the session, else as the new session packet."""
        s = self.session
        if name is None and s is not None and wire.compact_fits(p, s, self.session_every):
            self.pending = None
            self.frames += 1
            return wire.pack_compact(p, s, check=self.check, with_id=self.with_id)
        self.pending = dataclasses.replace(p, sender_name=name or self.name, epoch=epoch)
        return wire.pack(self.pending)

    def sent(self, taken: bool) -> None:
        """What the link said of the packet just made. After a drop (the new packet or the oldest queued one,
        which may be the session packet) the next frame starts a new session, so that no compact frame
        refers to a session the receiver will never see."""
        if not taken:
            self.session = None
        elif self.pending is not None:
            self.session = self.pending


def run_sender(
    source: FrameSource,
    preprocess: Callable[[np.ndarray], np.ndarray],
    encoder: Encoder,
    link: SenderLink,
    *,
    pair_id: str,
    options: SendOptions,
    kind: PayloadKind = PayloadKind.INT8,
    tiled: bool = False,
    on_stats: Callable[[SenderStats], None] | None = None,
    stop: threading.Event | None = None,
    drift: DriftWatch | None = None,
    on_log: Log | None = None,
) -> SenderStats:
    """Capture → preprocess → encode → pack → send until the source ends, ``max_frames`` or ``stop``.

    ``tiled``: the encoder makes tiled payloads (:class:`cae_edge.tiles.TiledEncoder`); packets say so.

    Does not close the source or the link (the caller owns them); a source that fails mid-stream ends the
    loop with ``status="source-error"`` instead of raising. Packets the link could not take yet are still in
    its queue when this returns: ``link.close()`` (or ``link.flush(timeout)``) delivers them.

    ``drift`` watches the payload sizes (:class:`DriftWatch`); each change of its verdict goes to ``on_log``
    and into :attr:`SenderStats.drift`. The encoder's codec, when it counts them (``escaped_encoded``),
    gives :attr:`SenderStats.escaped`.

    Returns:
        Final statistics (link counters as of the return; absorb ``link.stats`` again after closing it).

    Raises:
        ConfigError: bad options or pair id.
    """
    options.check()
    stop = stop or threading.Event()
    sid = wire.sender_id(options.name)
    pair = wire.pair_prefix(pair_id)
    epoch = int.from_bytes(os.urandom(4), "little")  # this sequence's identity: seq starts at 0 below
    stats = SenderStats(
        name=options.name,
        sender_id=sid,
        epoch=epoch,
        pair_id=pair_id,
        source=getattr(source, "description", ""),
    )
    saver = _input_saver(options, preprocess, source, pair_id)
    codec = getattr(encoder, "codec", None)
    escaped_at_start = getattr(codec, "escaped_encoded", 0)
    if drift is not None:
        stats.payload_bytes_typical = drift.typical

    def watched() -> SenderStats:
        stats.escaped = getattr(codec, "escaped_encoded", 0) - escaped_at_start
        if drift is not None:
            stats.payload_bytes_recent = round(drift.mean, 2)
            stats.drift, stats.drift_warnings = drift.warning, drift.warnings
        return stats

    clock = time.perf_counter
    ns = time.perf_counter_ns
    wire_bytes = payload_bytes = 0
    if options.wait_connected_s > 0:
        link.wait_connected(options.wait_connected_s)
    timer = StageTimer(*SEND_STAGES)
    start = timer.start
    pacer = _Pacer(options.fps, start)
    name_for = _NameCadence(options.name, math.inf if options.compact else options.name_every_s, link, start)
    compact = _CompactCadence(link, options.session_every, options.name) if options.compact else None
    next_stats = start + options.stats_every_s
    frames_at_report, time_at_report = 0, start
    seq = 0
    status = "stopped"
    try:
        while not stop.is_set():
            if options.max_frames and seq >= options.max_frames:
                status = "finished"
                break
            if not pacer.wait(stop):
                break
            t0 = ns()
            try:
                frame = source.read()
            except SourceError as e:
                status, stats.error = "source-error", str(e)
                break
            if frame is None:
                status = "finished"
                break
            t_wall_us = now_us()
            t_us = t_wall_us & wire.MASK32
            t1 = ns()
            image = preprocess(frame)
            t2 = ns()
            payload = encoder.encode(image)
            t3 = ns()
            now = clock()
            name = name_for(now)
            if compact is None:
                p = Packet(
                    pair, sid, seq & wire.MASK32, t_us, payload, kind, name, epoch if name else None, tiled
                )
                data = wire.pack(p)
            else:
                p = Packet(pair, sid, seq & wire.MASK32, t_us, payload, kind, tiled=tiled)
                data = compact.pack(p, name, epoch)
            t4 = ns()
            sent = link.send(data)
            if compact is not None:
                compact.sent(sent)
            t5 = ns()
            if saver is not None:
                saver(seq, image, t_wall_us)
            timer.split(t0, t1, t2, t3, t4, t5)
            wire_bytes += len(data)
            payload_bytes += len(payload)
            if drift is not None and (change := drift.add(len(payload))) and on_log is not None:
                on_log(f"{options.name}: {change}")
            seq += 1
            if on_stats is not None and now >= next_stats:
                next_stats = now + options.stats_every_s
                stats.fps_recent = round((seq - frames_at_report) / max(now - time_at_report, 1e-9), 1)
                frames_at_report, time_at_report = seq, now
                on_stats(watched().measure(seq, timer, wire_bytes, payload_bytes).absorb_open(link))
    finally:
        if saver is not None:
            saver.close()
        stats.status = status
        stats.compact = compact.frames if compact is not None else 0
        watched().measure(seq, timer, wire_bytes, payload_bytes).absorb_open(link)
    return stats


class _InputSaver:
    """Where ``--save-inputs`` puts each input: a recording (:class:`RecordingWriter`) or PNG files."""

    def __init__(self, options: SendOptions, meta: dict) -> None:
        self.name = options.name
        self.recording: RecordingWriter | None = None
        self.png: PngSink | None = None
        if options.save_inputs_format == "png":
            self.png = PngSink(options.save_inputs)
        else:
            self.recording = RecordingWriter(options.save_inputs, meta)

    def __call__(self, seq: int, image: np.ndarray, t_us: int) -> None:
        if self.recording is not None:
            self.recording.write(image, t_us / 1e6)
        else:
            self.png.write(self.name, seq, image)

    def close(self) -> None:
        if self.recording is not None:
            self.recording.close()


def _input_saver(
    options: SendOptions, preprocess: Any, source: FrameSource, pair_id: str
) -> _InputSaver | None:
    """The saver ``options.save_inputs`` asks for (``None``: none), with the recording's ``meta.json``."""
    if not options.save_inputs:
        return None
    spec = getattr(preprocess, "spec", None)
    meta = {
        "source": getattr(source, "description", ""),
        "preprocess": spec.to_dict() if spec is not None else None,
        "pair_id": pair_id,
        "sender": options.name,
        "clock": "wall",
        "fps": options.fps or None,
        "recorded_by": "cae-edge stream send --save-inputs",
    }
    return _InputSaver(options, meta)


@dataclass
class SendPipeline:
    """A bundle's sending half, built once: preprocessing, the encoder and the payload kind.

    :func:`send_pipeline` builds it; :meth:`run` runs :func:`run_sender` with it. The ``cae-edge stream send``
    command (through :func:`stream_send`), the soak test's senders and ``cae-edge stream bench`` all use it.
    """

    bundle: Any
    """The loaded bundle (:class:`~cae_edge.device.bundle.Bundle`)."""
    preprocess: Preprocessor
    """Camera frame → 28x28 uint8 model input (the manifest's spec with any overrides)."""
    encoder: Encoder
    """28x28 uint8 → payload bytes."""
    kind: PayloadKind
    """Wire payload kind of the bundle's coding."""
    paper: bool
    """The preprocessing inverts (dark ink on light paper): synthetic sources draw frames that way."""
    tiles: int = 1
    """Frames are ``tiles`` x ``tiles`` grids of 28x28 tiles in one packet (1: one 28x28 frame)."""

    @property
    def pair_id(self) -> str:
        """The bundle's pair id, stamped (as a prefix) on every packet."""
        return self.bundle.pair_id

    def run(
        self,
        source: FrameSource,
        link: SenderLink,
        options: SendOptions,
        *,
        on_stats: Callable[[SenderStats], None] | None = None,
        stop: threading.Event | None = None,
        on_log: Log | None = None,
    ) -> SenderStats:
        """:func:`run_sender` with this pipeline's parts and the bundle's :class:`DriftWatch`; the caller owns
        ``source`` and ``link``."""
        return run_sender(
            source,
            self.preprocess,
            self.encoder,
            link,
            pair_id=self.pair_id,
            options=options,
            kind=self.kind,
            tiled=self.tiles > 1,
            on_stats=on_stats,
            stop=stop,
            drift=DriftWatch.for_bundle(
                self.bundle, options.drift_factor, options.drift_window, tiles=self.tiles
            ),
            on_log=on_log,
        )


def send_pipeline(
    bundle: str | Path | Any, *, preprocess: dict | None = None, threads: int = 1, tiles: int = 1
) -> SendPipeline:
    """Build the sender's bundle → preprocess → encoder chain.

    Args:
        bundle: shipped bundle name, bundle directory or a loaded bundle.
        preprocess: overrides of the bundle manifest's ``preprocess`` block.
        threads: encoder interpreter threads.
        tiles: N > 1 sends (28N)x(28N) frames as NxN tiles in one packet (:func:`tiled_parts`).

    Raises:
        BundleError: the bundle is missing or broken.
        ConfigError: a bad preprocess spec or a coding the wire format has no kind for.
    """
    from .bundle import load_bundle

    b = load_bundle(bundle) if isinstance(bundle, str | Path) else bundle
    spec = dict(b.preprocess)
    spec.update(preprocess or {})
    kind = payload_kind(b.coding)
    encoder: Encoder = b.encoder(threads)
    if tiles != 1:
        spec, encoder = tiled_parts(b, spec, encoder, kind, tiles)
    pre = Preprocessor(spec)
    return SendPipeline(b, pre, encoder, kind, paper=bool(spec.get("invert")), tiles=tiles)


def tiled_parts(
    bundle: Any, spec: dict, encoder: Encoder, kind: PayloadKind, tiles: int
) -> tuple[dict, Encoder]:
    """The preprocess spec and encoder of NxN tiled frames: the bundle's plain resize to 28N x 28N, and a
    :class:`~cae_edge.tiles.TiledEncoder` around the bundle's encoder.

    Raises:
        ConfigError: N outside 1 .. 16, or a bundle whose preprocessing centres one object per frame
            (``mnist_normalize``: MNIST-style bundles), where tiles of one frame make no sense.
    """
    from ..tiles import MAX_NODE_TILES, TILE, TiledEncoder

    if not isinstance(tiles, int) or isinstance(tiles, bool) or not 1 <= tiles <= MAX_NODE_TILES:
        raise ConfigError(f"tiles {tiles!r}: use N = 1 .. {MAX_NODE_TILES} for an NxN grid (1 = no tiles)")
    if spec.get("mnist_normalize"):
        raise ConfigError(
            f"tiles {tiles}: bundle {bundle.path.name} centres one object per frame (preprocess "
            "mnist_normalize); tiles need a plain-resize bundle (scenes-*), or [preprocess] "
            "mnist_normalize = false in the node config"
        )
    if spec.get("size", TILE) != TILE:
        raise ConfigError(
            f"tiles {tiles}: bundle {bundle.path.name} takes {spec['size']}-pixel frames, not {TILE}"
        )
    fixed = int(bundle.latent_dim) if kind == PayloadKind.INT8 else None
    return dict(spec, size=TILE * tiles), TiledEncoder(encoder, tiles, tiles, fixed)


def open_sender_link(
    connect: str, options: SenderOptions | MqttSenderOptions | None, *, name: str, pair_id: str
) -> PushSender | MqttSender:
    """The link the options ask for: through an MQTT broker for
    :class:`~cae_edge.device.mqtt.MqttSenderOptions` (``connect`` is the broker, ``name`` the node's topic),
    else ZeroMQ PUSH to the receiver at ``connect``.

    Raises:
        ConfigError: a bad endpoint or option.
    """
    if isinstance(options, MqttSenderOptions):
        return MqttSender(connect, name, options, pair_id=pair_id)
    return PushSender(connect, options or SenderOptions())


def stream_send(
    source: str | FrameSource,
    connect: str,
    bundle: str | Path | Any = "mnist",
    options: SendOptions | None = None,
    link_options: SenderOptions | MqttSenderOptions | None = None,
    *,
    preprocess: dict | None = None,
    threads: int = 1,
    tiles: int = 1,
    loop: bool = False,
    on_stats: Callable[[SenderStats], None] | None = None,
    on_log: Log | None = None,
    stop: threading.Event | None = None,
) -> SenderStats:
    """Open everything by name and run the :func:`send_pipeline`; closes what it opened (the link flushes).

    Args:
        source: a source spec for :func:`~cae_edge.device.capture.open_source` or an open source.
        connect: the receiver, e.g. ``tcp://192.168.1.10:5555``, or with MQTT link options the broker,
            e.g. ``mqtts://broker.lan:8883``.
        bundle: shipped bundle name, bundle directory or a loaded bundle.
        options: loop options (name, fps, ...).
        link_options: queue, drop policy, reconnect, security;
            :class:`~cae_edge.device.mqtt.MqttSenderOptions` picks the MQTT transport.
        preprocess: overrides of the bundle manifest's ``preprocess`` block.
        threads: encoder interpreter threads.
        tiles: N > 1: (28N)x(28N) frames, NxN tiles in one packet (scenes-style bundles only).
        loop: replay files and folders endlessly.
        on_stats: called with statistics about once per ``options.stats_every_s``.
        on_log: called with one line per notable event.
        stop: set it to stop (the CLI does on SIGINT/SIGTERM).

    Raises:
        SourceError: the source cannot be opened.
        BundleError: the bundle is missing or broken.
        ConfigError: a bad option or endpoint.
    """
    options = options or SendOptions()
    options.check()
    pipe = send_pipeline(bundle, preprocess=preprocess, threads=threads, tiles=tiles)
    src = open_source(source, loop=loop, paper=pipe.paper) if isinstance(source, str) else source
    log = on_log or (lambda _msg: None)
    try:
        with open_sender_link(connect, link_options, name=options.name, pair_id=pipe.pair_id) as link:
            b, kind = pipe.bundle, pipe.kind.name.lower()
            if pipe.tiles > 1:
                kind += f", {pipe.tiles}x{pipe.tiles} tiles of 28x28 per frame"
            log(
                f"sending {src.description} as {options.name!r} (id {wire.sender_id(options.name):#06x}) to "
                f"{connect} with bundle {b.pair_id} ({b.latent_dim}-byte latent, {kind})"
            )
            stats = pipe.run(src, link, options, on_stats=on_stats, stop=stop, on_log=log)
            link.close()
            stats.absorb(link.stats)
    finally:
        if isinstance(source, str):
            src.close()
    return stats
