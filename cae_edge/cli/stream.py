"""`cae-edge stream`: send camera frames as latents, receive and decode them, compare, benchmark.

No TensorFlow here (a Raspberry Pi has none): everything runs on LiteRT through ``cae_edge.device``.

Exit codes (both ends): 0 finished (source ended, --max-frames reached, Ctrl-C/SIGTERM, receiver idle
after frames); 1 could not start (bad option, bundle, source, address); 2 usage error; 3 the source failed
mid-stream (camera unplugged); 4 receiver --timeout passed without a single decoded frame.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..device.probe import DEFAULT_TIMEOUT_S as PROBE_TIMEOUT_S
from ..errors import CaeEdgeError, ConfigError
from .common import fail, say, stop_on_signals, write_json

if TYPE_CHECKING:
    from ..device.config import NodeConfig

EXIT_SOURCE_FAILED = 3
"""``send``: the frame source failed mid-stream (camera unplugged, stream dropped)."""
EXIT_NOTHING_RECEIVED = 4
"""``receive``: ``--timeout`` passed without a single decoded frame."""

app = typer.Typer(
    help="Stream frames from camera nodes to a receiver: int8 latents over ZeroMQ, decoded on arrival.",
    no_args_is_help=True,
)


class Policy(str, Enum):
    drop_oldest = "drop-oldest"
    drop_newest = "drop-newest"


class Transport(str, Enum):
    zmq = "zmq"
    mqtt = "mqtt"


class Crop(str, Enum):
    center = "center"
    letterbox = "letterbox"


def _warn_insecure(role: str) -> None:
    typer.secho(
        f"WARNING: --insecure: this {role} streams WITHOUT encryption or authentication; anyone on the "
        "network can read the frames and inject their own. Use CURVE keys (`cae-edge keys generate`, "
        "docs/fleet.md).",
        fg=typer.colors.RED,
        bold=True,
        err=True,
    )


NODE_FLAGS: dict[str, tuple[str, str]] = {
    "source": ("source", "--source"),
    "connect": ("connect", "--connect"),
    "bundle": ("bundle", "--bundle"),
    "name": ("name", "--name"),
    "fps": ("fps", "--fps"),
    "max_frames": ("max_frames", "--max-frames"),
    "queue": ("queue.size", "--queue"),
    "policy": ("queue.policy", "--policy"),
    "threads": ("threads", "--threads"),
    "compact": ("compact", "--compact"),
    "session_every": ("session_every", "--session-every"),
    "tiles": ("tiles", "--tiles"),
    "invert": ("preprocess.invert", "--invert/--no-invert"),
    "crop": ("preprocess.crop", "--crop"),
    "keys": ("security.key", "--keys"),
    "server_key": ("security.server_key", "--server-key"),
    "insecure": ("security.insecure", "--insecure"),
    "transport": ("transport", "--transport"),
    "broker": ("mqtt.broker", "--broker"),
    "username": ("mqtt.username", "--username"),
    "password_file": ("mqtt.password_file", "--password-file"),
    "ca_file": ("mqtt.ca_file", "--ca-file"),
    "topic_prefix": ("mqtt.topic_prefix", "--topic-prefix"),
}
"""``stream send`` parameters that override a node config file: parameter -> (config key, flag)."""
_FLAG = {key: flag for key, flag in NODE_FLAGS.values()}


def node_config(path: Path | None, given: dict[str, Any], *, check_key_files: bool = True) -> NodeConfig:
    """The node config from ``--config`` (if any), overridden by the flags the user gave.

    Args:
        path: The ``--config`` file, or ``None`` to build the config from the flags alone.
        given: Node config keys (``"fps"``, ``"queue.size"``, ``"security.key"``, ...) to the values of the
            flags actually given (see :data:`NODE_FLAGS`).
        check_key_files: Load the CURVE key files now.

    Raises:
        ConfigError: as :func:`~cae_edge.device.config.resolve_node_config`; without a file, a missing
            ``--source``/``--connect`` or missing keys (without ``--insecure``) name the flags to add.
        KeyFileError: a key file is missing, has bad content or unsafe permissions.
    """
    from ..device.config import resolve_node_config

    if path is None:
        have = {k for k, v in given.items() if v is not None}
        mqtt = given.get("transport") == "mqtt"
        missing = [_FLAG[k] for k in ("source", "mqtt.broker" if mqtt else "connect") if k not in have]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} required (or --config NODE.toml with them)")
        keyed = "security.key" in have and "security.server_key" in have
        if not mqtt and not given.get("security.insecure") and not keyed:
            raise ConfigError(
                "the sender needs --keys (this node's NAME.key_secret) and --server-key (the receiver's "
                "public .key) for an encrypted, authenticated link (make them with `cae-edge keys generate "
                "NAME`), or --insecure to stream in the clear"
            )
    return resolve_node_config(path, given, origin="(command line)", check_key_files=check_key_files)


KeysFile = Annotated[
    Path | None,
    typer.Option(
        "--keys", help="This end's CURVE secret key file (NAME.key_secret from `cae-edge keys generate`)."
    ),
]
MaxFrames = Annotated[int, typer.Option("--max-frames", min=0, help="Stop after N frames; 0 = no limit.")]
Insecure = Annotated[
    bool,
    typer.Option(
        "--insecure", help="No encryption, no authentication (CURVE, or TLS + broker password, otherwise)."
    ),
]
TransportOpt = Annotated[
    Transport,
    typer.Option(
        "--transport",
        help="zmq: ZeroMQ straight between node and receiver; mqtt: through an MQTT v5 broker (--broker).",
    ),
]
Broker = Annotated[
    str | None, typer.Option("--broker", help="MQTT transport: the broker, mqtts://HOST:PORT.")
]
Username = Annotated[
    str | None,
    typer.Option("--username", help="MQTT transport: broker user name (sender default: its --name)."),
]
PasswordFile = Annotated[
    Path | None,
    typer.Option("--password-file", help="MQTT transport: file with this client's broker password (0600)."),
]
CaFile = Annotated[
    Path | None,
    typer.Option("--ca-file", help="MQTT transport: CA certificate of the broker (default: system CAs)."),
]
TopicPrefix = Annotated[
    str, typer.Option("--topic-prefix", help="MQTT transport: first topic level(s) of every topic.")
]


class SaveFormat(str, Enum):
    recording = "recording"
    png = "png"


@app.command()
def send(
    ctx: typer.Context,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            "-s",
            help="Camera index (0), /dev/videoN, video file, RTSP/HTTP URL, image folder, picamera2[:WxH], "
            "or synthetic[:mnist|fashion].",
        ),
    ] = None,
    connect: Annotated[
        str | None, typer.Option("--connect", "-c", help="The receiver, e.g. tcp://192.168.1.10:5555.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Node config file (TOML, docs/node.example.toml); flags override it."),
    ] = None,
    keys: KeysFile = None,
    server_key: Annotated[
        Path | None,
        typer.Option("--server-key", help="The receiver's public key file (receiver.key), pinned."),
    ] = None,
    insecure: Insecure = False,
    transport: TransportOpt = Transport.zmq,
    broker: Broker = None,
    username: Username = None,
    password_file: PasswordFile = None,
    ca_file: CaFile = None,
    topic_prefix: TopicPrefix = "cae-edge",
    bundle: Annotated[
        str, typer.Option("--bundle", "-b", help="Shipped bundle name or bundle directory.")
    ] = "mnist",
    name: Annotated[
        str | None, typer.Option("--name", help="Sender name shown by the receiver (default: host name).")
    ] = None,
    fps: Annotated[
        float, typer.Option("--fps", min=0, help="Frame-rate cap; 0 = as fast as possible.")
    ] = 0.0,
    max_frames: MaxFrames = 0,
    queue: Annotated[
        int, typer.Option("--queue", min=1, help="Frames held while the receiver is slow or away.")
    ] = 64,
    policy: Annotated[
        Policy, typer.Option("--policy", help="Full queue: drop the oldest frame (live video) or the newest.")
    ] = Policy.drop_oldest,
    wait: Annotated[
        float, typer.Option("--wait", min=0, help="Wait up to S seconds for a receiver before capturing.")
    ] = 0.0,
    loop: Annotated[bool, typer.Option("--loop", help="Replay a video file or folder endlessly.")] = False,
    invert: Annotated[
        bool | None, typer.Option("--invert/--no-invert", help="Override the bundle's inversion.")
    ] = None,
    crop: Annotated[Crop | None, typer.Option("--crop", help="Override the bundle's crop mode.")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Encoder interpreter threads.")] = 1,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact",
            help="Compact frames: 4 bytes of overhead per frame on a CURVE link (8 with --insecure) instead "
            "of 24, between full session packets. The receiver must be new enough to read them.",
        ),
    ] = False,
    session_every: Annotated[
        int,
        typer.Option(
            "--session-every", min=1, max=10_000, help="With --compact: a full session packet every N frames."
        ),
    ] = 100,
    tiles: Annotated[
        int,
        typer.Option(
            "--tiles",
            min=1,
            max=16,
            help="N > 1: send 28N x 28N frames as NxN tiles of 28x28, one packet per frame (scenes-* "
            "bundles). The receiver must be new enough to read them.",
        ),
    ] = 1,
    probe_timeout: Annotated[
        float,
        typer.Option(
            "--probe-timeout",
            min=1,
            help="Seconds the interpreter check (a child process) may take; raise it on a very slow board "
            "or under CPU emulation.",
        ),
    ] = PROBE_TIMEOUT_S,
    save_inputs: Annotated[
        Path | None,
        typer.Option(
            "--save-inputs",
            help="Also record each model input (28x28; 28N x 28N with --tiles) with its capture time as a "
            "recording in DIR (as `data record` writes; `train --dataset DIR` takes it). Flushed every 100 "
            "frames or 5 s.",
        ),
    ] = None,
    save_inputs_format: Annotated[
        SaveFormat,
        typer.Option("--save-inputs-format", help="png: DIR/<name>/<seq>.png instead of a recording."),
    ] = SaveFormat.recording,
    drift_factor: Annotated[
        float | None,
        typer.Option(
            "--drift-factor",
            min=0,
            help="Warn when the last 100 payloads average more than this many times the bundle's typical "
            "size (the scene is not what it was trained on); default 1.3, 0 = off. Entropy-coded bundles.",
        ),
    ] = None,
    stats_json: Annotated[
        Path | None, typer.Option("--json", help="Write the final statistics here.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live statistics, only the summary.")
    ] = False,
    give_up_after: Annotated[
        float,
        typer.Option(
            "--give-up-after",
            min=0,
            help="Exit 1 with the reason once every handshake for S seconds was refused (key not allowed, "
            "wrong --server-key, one end --insecure); 0 = keep retrying.",
        ),
    ] = 30.0,
) -> None:
    """Capture, preprocess, encode with LiteRT and send each frame (never blocks on the network).

    Live statistics (fps, encode time, bytes per frame, drops) go to stderr once a second; a summary at the
    end. Exit codes: 0 done or stopped, 1 could not start or the receiver keeps refusing this node (the
    error says why), 3 the source failed mid-stream.
    """
    from ..device.mqtt import MqttSenderOptions
    from ..device.sender import SenderStats, SendOptions, stream_send
    from ..device.transport import SenderOptions

    peer = "receiver"

    def live(s: SenderStats) -> None:
        state = "connected" if s.connected else f"no {peer}"
        if s.refused and not s.connected:
            why = "user name/password" if peer == "broker" else "this node's key is not in its --allowed-keys"
            state = f"REFUSED by the {peer} {s.refused}x ({why})"
        drift = ""
        if s.drift:
            drift = f", DRIFT: payloads {s.payload_bytes_recent / s.payload_bytes_typical:.1f}× typical"
        say(
            f"{s.name}: {s.frames} frames, {s.fps_recent:.1f} fps, encode {s.encode_us:.0f} µs, "
            f"preprocess {s.preprocess_us:.0f} µs, {s.bytes_per_frame:.0f} B/frame, sent {s.sent}, "
            f"dropped {s.dropped}, {state}{drift}"
        )

    from ..device.security import client_security

    # flags the user gave override the config file; the rest come from the file (or the defaults)
    values = {
        "source": source, "connect": connect, "bundle": bundle, "name": name, "fps": fps,
        "max_frames": max_frames, "queue": queue, "policy": policy.value, "threads": threads,
        "compact": compact or None, "session_every": session_every, "tiles": tiles,
        "invert": invert, "crop": None if crop is None else crop.value,
        "keys": keys, "server_key": server_key, "insecure": insecure or None,
        "transport": transport.value, "broker": broker, "username": username, "password_file": password_file,
        "ca_file": ca_file, "topic_prefix": topic_prefix,
    }  # fmt: skip
    given = {
        NODE_FLAGS[param][0]: value
        for param, value in values.items()
        if getattr(ctx.get_parameter_source(param), "name", "DEFAULT") != "DEFAULT"  # given, not defaulted
    }
    stop = stop_on_signals()
    try:
        node = node_config(config, given)
        if node.security.insecure:
            _warn_insecure("sender")
        from ..device.probe import probe_interpreter

        # a crashing interpreter: one error line, not a dead node
        probe = probe_interpreter(node.bundle, timeout_s=probe_timeout)
        if not quiet:
            say(f"interpreter: {probe.package} {probe.version} runs {node.bundle} ({probe.seconds:.1f} s)")
        opts = SendOptions(
            name=node.name,
            fps=node.fps,
            max_frames=node.max_frames,
            compact=node.compact,
            session_every=node.session_every,
            wait_connected_s=wait,
            save_inputs=save_inputs,
            save_inputs_format=save_inputs_format.value,
            **({} if drift_factor is None else {"drift_factor": drift_factor}),
        )
        connect: str = node.connect
        link: SenderOptions | MqttSenderOptions
        if node.transport == "mqtt":
            m, peer, connect = node.mqtt, "broker", node.mqtt.broker or ""
            link = MqttSenderOptions(
                username=m.username, password_file=m.password_file, ca_file=m.ca_file,
                insecure=node.security.insecure, topic_prefix=m.topic_prefix,
                queue_size=node.queue.size, policy=node.queue.policy, on_log=say,
            )  # fmt: skip
        else:
            link = SenderOptions(
                queue_size=node.queue.size,
                policy=node.queue.policy,
                security=client_security(node.security),
                give_up_refused_s=give_up_after,
            )
        stats = stream_send(
            node.source,
            connect,
            node.bundle,
            opts,
            link,
            preprocess=node.preprocess.overrides(),
            threads=node.threads,
            tiles=node.tiles,
            loop=loop,
            on_stats=None if quiet else live,
            on_log=say,
            stop=stop,
        )
    except CaeEdgeError as e:
        raise fail(e) from None
    say(
        f"{stats.status}: {stats.frames} frames in {stats.elapsed_s:.1f} s ({stats.fps:.1f} fps), "
        f"sent {stats.sent}, dropped {stats.dropped} (queue full), lost at close {stats.lost_at_close}, "
        f"{stats.bytes_per_frame:.1f} B/frame on the wire ({stats.payload_bytes:.0f} B payload), "
        f"preprocess {stats.preprocess_us:.0f} µs, encode {stats.encode_us:.0f} µs, "
        f"pack {stats.pack_us:.1f} µs, send {stats.send_us:.1f} µs"
    )
    if stats.escaped:
        say(f"  latent values beyond the entropy model's alphabet: {stats.escaped}")
    if stats.drift:
        say(f"  still drifting at the end: {stats.drift}")
    elif stats.drift_warnings:
        say(f"  payloads ran above the bundle's typical size {stats.drift_warnings}x during the run")
    write_json(stats_json, stats.to_dict())
    if stats.status == "source-error":
        say(f"error: {stats.error}")
        raise typer.Exit(EXIT_SOURCE_FAILED)


def _outside_out(out: Path | None, files: dict[str, Path | None]) -> None:
    """Refuse receiver files inside ``--out``, where each sender gets a folder named after it."""
    if out is None:
        return
    root = out.expanduser().resolve()
    for flag, path in files.items():
        if path is not None and root in path.expanduser().resolve().parents:
            raise ConfigError(
                f"{flag} {path} is inside --out {out}, where every sender gets a folder named after it (a "
                f"sender named {path.name!r} would collide with it): put it outside {out}"
            )


@app.command()
def receive(
    bind: Annotated[str, typer.Option("--bind", help="Where to listen, e.g. tcp://*:5555.")] = "tcp://*:5555",
    transport: TransportOpt = Transport.zmq,
    broker: Broker = None,
    username: Username = None,
    password_file: PasswordFile = None,
    ca_file: CaFile = None,
    topic_prefix: TopicPrefix = "cae-edge",
    group: Annotated[
        str,
        typer.Option(
            "--group",
            help="MQTT transport: shared-subscription group; receivers in one group split the frames "
            '("" = take every frame).',
        ),
    ] = "cae-edge",
    bundle: Annotated[
        str, typer.Option("--bundle", "-b", help="Shipped bundle name or bundle directory.")
    ] = "mnist",
    out: Annotated[Path | None, typer.Option("--out", help="Write frames as DIR/<sender>/<seq>.png.")] = None,
    video: Annotated[
        Path | None,
        typer.Option("--video", help="Write a video per sender (.avi MJPG, .mkv lossless, .mp4)."),
    ] = None,
    show: Annotated[
        bool, typer.Option("--show", help="Live mosaic window (needs OpenCV with a GUI).")
    ] = False,
    max_frames: MaxFrames = 0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="Stop after S seconds without a frame; 0 = never.")
    ] = 0.0,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Decoder interpreter threads.")] = 1,
    max_age_ms: Annotated[
        float,
        typer.Option(
            "--max-age-ms",
            min=0,
            help="Latency bound: drop frames older than this (ms since capture) undecoded; 0 = no bound.",
        ),
    ] = 250.0,
    queue_per_sender: Annotated[
        int,
        typer.Option(
            "--queue-per-sender", min=1, help="Frames waiting for decode per sender (full: oldest out)."
        ),
    ] = 256,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Decode processes, this one counted: 1 = in this process only (one core); N > 1 = N - 1 "
            "worker processes, and this one decodes what they have no room for (each sender's frames are "
            "delivered in order).",
        ),
    ] = 1,
    stats_json: Annotated[
        Path | None, typer.Option("--json", help="Write the final statistics here.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live statistics, only the summary.")
    ] = False,
    keys: KeysFile = None,
    allowed_keys: Annotated[
        Path | None,
        typer.Option(
            "--allowed-keys", help="Directory of the senders' public *.key files; others are refused."
        ),
    ] = None,
    insecure: Insecure = False,
    status: Annotated[
        Path | None,
        typer.Option(
            "--status", help="Keep per-sender state in this JSON file (rewritten atomically each second)."
        ),
    ] = None,
) -> None:
    """Receive packets from any number of nodes, decode each frame, write/show it, and keep per-sender stats.

    Packets that are malformed or made with another bundle (pair id) are refused and counted by reason. When
    more frames arrive than this machine decodes, the newest win: frames older than --max-age-ms are dropped
    undecoded (counted per sender: "stale"; a full per-sender queue: "backlog"); senders take turns.
    With --transport mqtt it subscribes at --broker instead of binding, sharing the frames with the other
    receivers of its --group.
    Exit codes: 0 done or stopped, 1 could not start, 4 --timeout passed without any frame.
    """
    from ..device.receiver import ReceiveOptions, ReceiverStats, stream_receive
    from ..device.sinks import MosaicSink, PngSink, VideoSink

    def live(s: ReceiverStats) -> None:
        parts = [f"{s.frames} frames"]
        for p in s.senders.values():
            lat = p.latency_ms.get("p50", 0.0)
            drop = sum(p.dropped.values())
            parts.append(
                f"{p.name}: {p.fps:.1f} fps, latency p50 {lat:.1f} ms, dropped {drop}, lost {p.lost}"
            )
        if s.rejected:
            parts.append("rejected " + ", ".join(f"{k} {v}" for k, v in sorted(s.rejected.items())))
        say(" | ".join(parts))

    from ..device.security import CurveServer, SecurityOptions
    from ..device.status import StatusFile, receiver_status
    from ..device.transport import ReceiverOptions

    curve: CurveServer | None = None
    status_file: StatusFile | None = None
    mqtt = transport == Transport.mqtt
    nodes: dict[str, dict] = {}

    def report(s: ReceiverStats, force: bool = False) -> None:
        if not quiet and not force:
            live(s)
        if status_file is not None:
            doc = receiver_status(s, curve.stats if curve else None, secured=curve is not None or secure_mqtt)
            if mqtt:
                doc["mqtt"] = {"broker": broker, "group": group, "nodes": dict(nodes)}
            if not status_file.update(doc, force=force) and status_file.error and status_file.errors == 1:
                say(f"cannot write the status file (going on; counted): {status_file.error}")

    from ..device.mqtt import MqttReceiverOptions

    link: ReceiverOptions | MqttReceiverOptions
    secure_mqtt = mqtt and not insecure
    stop = stop_on_signals()
    try:
        _outside_out(out, {"--status": status, "--json": stats_json, "--video": video})
        if mqtt:
            if broker is None:
                raise ConfigError("--transport mqtt needs --broker mqtts://HOST:PORT (the MQTT broker)")
            if insecure:
                _warn_insecure("receiver")
            link = MqttReceiverOptions(
                username=username, password_file=password_file, ca_file=ca_file, insecure=insecure,
                topic_prefix=topic_prefix, group=group, on_log=say,
                on_status=lambda st: nodes.__setitem__(st.node, st.to_dict()),
            )  # fmt: skip
            bind = broker
        else:
            sec = SecurityOptions(key=keys, allowed_keys=allowed_keys, insecure=insecure)
            sec.check_server()
            if insecure:
                _warn_insecure("receiver")
            else:
                curve = CurveServer(sec)
            link = ReceiverOptions(security=curve)
        if status is not None:
            status_file = StatusFile(status)
        sinks: list = []
        if out is not None:
            sinks.append(PngSink(out))
        if video is not None:
            sinks.append(VideoSink(video))
        if show:
            sinks.append(MosaicSink())
        stats = stream_receive(
            bind,
            bundle,
            ReceiveOptions(
                max_frames=max_frames,
                idle_timeout_s=timeout,
                max_age_ms=max_age_ms,
                queue_per_sender=queue_per_sender,
                workers=workers,
            ),
            link,
            sinks=sinks,
            threads=threads,
            on_stats=None if quiet and status_file is None else report,
            on_log=say,
            stop=stop,
        )
    except CaeEdgeError as e:
        if curve is not None:
            curve.close()
        raise fail(e) from None
    report(stats, force=True)
    say(
        f"{stats.status}: {stats.frames} frames in {stats.elapsed_s:.1f} s ({stats.fps:.1f} fps), "
        f"decode {stats.decode_us:.0f} µs, unpack {stats.unpack_us:.1f} µs, rejected {stats.rejected_total}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(stats.rejected.items()))})" if stats.rejected else "")
        + (
            f", dropped {', '.join(f'{k} {v}' for k, v in sorted(stats.dropped.items()))}"
            if stats.dropped
            else ""
        )
    )
    for p in stats.senders.values():
        lat = p.latency_ms
        say(
            f"  {p.name} (id {p.sender_id:#06x}): {p.frames} of {p.received} frames decoded, dropped "
            f"{sum(p.dropped.values())} {p.dropped or ''}, lost {p.lost}, restarts {p.restarts}, "
            + (f"skipped {p.skipped} (other receivers' share or lost), " if p.skipped else "")
            + f"latency p50 {lat.get('p50', 0):.2f} ms p99 {lat.get('p99', 0):.2f} ms"
            + (f", key {p.peer}" if p.peer else "")
        )
    if stats.refused_by:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.refused_by.items()))
        say(f"  refused {sum(stats.refused_by.values())} handshakes ({kinds})")
    extra = {
        "revocations (every connection dropped)": stats.revocations,
        "frames the sinks could not write": stats.sink_errors,
        "senders forgotten (over the limit)": stats.evicted,
        "log lines suppressed (counted)": stats.log_suppressed,
        "decode workers restarted (their frames dropped as 'worker')": stats.worker_restarts,
    }
    if stats.workers > 1:
        say(
            f"  {stats.workers} decode processes: {stats.decoded_here} frames decoded in this one, the "
            f"others in {stats.workers - 1} worker process(es) ({stats.worker_cpu_s:.1f} CPU s, "
            f"{stats.worker_idle_s:.1f} s waiting for a batch)"
        )
    for what, n in extra.items():
        if n:
            say(f"  {what}: {n}")
    write_json(stats_json, stats.to_dict())
    if stats.status == "nothing-received":
        raise typer.Exit(EXIT_NOTHING_RECEIVED)


@app.command()
def compare(
    sent: Annotated[
        Path,
        typer.Argument(
            help="Inputs saved by `send --save-inputs`: its recording, or DIR/<name>/<seq>.png (format png)."
        ),
    ],
    received: Annotated[
        Path, typer.Argument(help="Frames written by `receive --out` (DIR/<name>/<seq>.png).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Side-by-side PNG to write.")] = Path("side-by-side.png"),
    count: Annotated[int, typer.Option("--count", min=1, help="Frame pairs in the picture.")] = 16,
    scale: Annotated[int, typer.Option("--scale", min=1, help="Enlarge each 28x28 frame this much.")] = 4,
    stats_json: Annotated[Path | None, typer.Option("--json", help="Write PSNR/SSIM here.")] = None,
) -> None:
    """Originals (top row) above decoded frames (bottom row), matched by sender and sequence number."""
    import cv2
    import numpy as np

    from .. import metrics
    from ..device.recording import is_recording, read_recording

    if not sent.is_dir() or not received.is_dir():
        raise fail(ValueError(f"{sent if not sent.is_dir() else received}: not a folder"))
    if is_recording(sent):  # frame i of the recording is sequence number i of the sender it names
        try:
            rec = read_recording(sent)
        except CaeEdgeError as e:
            raise fail(e) from None
        name = str(rec.meta.get("sender", ""))
        pairs = sorted(
            p.relative_to(received)
            for p in received.glob(f"{name}/*.png")
            if p.stem.isdigit() and int(p.stem) < len(rec.frames)
        )
        originals = [rec.frames[int(p.stem)] for p in pairs]
        where = f"{sent} (sender {name!r}, {len(rec.frames)} frames)"
    else:
        pairs = sorted(
            p.relative_to(received)
            for p in received.glob("*/*.png")
            if (sent / p.relative_to(received)).is_file()
        )
        originals = [cv2.imread(str(sent / p), cv2.IMREAD_GRAYSCALE) for p in pairs]
        where = f"{sent} (same <name>/<seq>.png)"
    if not pairs:
        raise fail(ValueError(f"no frame is in both {where} and {received}"))
    a = np.stack(originals)
    b = np.stack([cv2.imread(str(received / p), cv2.IMREAD_GRAYSCALE) for p in pairs])
    q = metrics.quality(a, b)
    pick = np.linspace(0, len(pairs) - 1, min(count, len(pairs))).round().astype(int)
    gap = np.full((28, 2), 128, np.uint8)
    top = np.hstack([np.hstack([a[i], gap]) for i in pick])
    bottom = np.hstack([np.hstack([b[i], gap]) for i in pick])
    grid = np.vstack([top, np.full((2, top.shape[1]), 128, np.uint8), bottom])
    grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), grid):
        raise fail(ValueError(f"{out}: cannot write the PNG"))
    result = {
        "frames": len(pairs),
        "psnr": round(q["psnr"], 2),
        "ssim": round(q["ssim"], 4),
        "image": str(out),
    }
    write_json(stats_json, result)
    typer.echo(
        f"{len(pairs)} frames matched: PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.4f}; wrote {out} "
        f"({len(pick)} pairs, originals on top)"
    )


def _receiver_summary(runs: list[dict], workers: list[int]) -> dict:
    """Per decode process count over its runs: median CPU µs/frame (main, workers), the share decoded in the
    receiver's process, the bound they give, the best wall-clock rate; and each count's ratio to the first
    count given (e.g. 2 decode processes against 1)."""
    from statistics import median

    from ..benchmark.stream_bench import bound_fps

    by: dict[int, dict] = {}
    for n in dict.fromkeys(workers):
        mine = [r for r in runs if r["workers"] == n]
        main = median(r["cpu_main_us"] for r in mine)
        work = median(r["cpu_workers_us"] for r in mine)
        here = median(r["here_decode_us"] for r in mine)
        best = max(mine, key=lambda r: r["fps"])
        by[n] = {
            "runs": len(mine),
            "cpu_main_us": round(main, 1),
            "cpu_workers_us": round(work, 1),
            "cpu_total_us": round(main + work, 1),
            "here_pct": round(median(r["here_pct"] for r in mine), 1),
            "bound_fps": round(bound_fps(n, mine[0]["cores"], main, work, here), 1),
            "best_fps": best["fps"],
            "best_others_pct": best["others_pct"],
            "median_fps": round(median(r["fps"] for r in mine), 1),
            "worker_idle_pct": round(median(r.get("worker_idle_pct", 0.0) for r in mine), 1),
        }
    base = by[workers[0]]
    lines = []
    for n, b in by.items():
        b["bound_ratio"] = round(b["bound_fps"] / base["bound_fps"], 2)
        b["wall_ratio"] = round(b["best_fps"] / base["best_fps"], 2) if base["best_fps"] else 0.0
        b["median_wall_ratio"] = round(b["median_fps"] / base["median_fps"], 2) if base["median_fps"] else 0.0
        others = "?" if b["best_others_pct"] is None else f"{b['best_others_pct']:.0f} %"
        lines.append(
            f"{n} decode process(es), {b['runs']} run(s): median CPU µs/frame {b['cpu_main_us']:.1f} + "
            f"{b['cpu_workers_us']:.1f} = {b['cpu_total_us']:.1f} ({b['here_pct']:.0f} % decoded in the "
            f"receiver's process) -> bound {b['bound_fps']:,.0f} frames/s "
            f"(x{b['bound_ratio']:.2f}); best wall {b['best_fps']:,.0f} frames/s (x{b['wall_ratio']:.2f}, "
            f"others took {others}); median wall {b['median_fps']:,.0f} frames/s "
            f"(x{b['median_wall_ratio']:.2f})"
            + (f"; the worker(s) ran dry {b['worker_idle_pct']:.1f} % (median)" if n > 1 else "")
        )
    return {"by_workers": by, "lines": lines}


class BenchSource(str, Enum):
    canvas = "canvas"
    digits = "digits"


@app.command()
def bench(
    bundle: Annotated[
        str, typer.Option("--bundle", "-b", help="Shipped bundle name or bundle directory.")
    ] = "mnist",
    frames: Annotated[int, typer.Option("--frames", min=100, help="Frames through each end.")] = 5000,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Interpreter threads.")] = 1,
    source: Annotated[
        BenchSource,
        typer.Option("--source", help="canvas: 120x160 synthetic camera frames; digits: 28x28 test images."),
    ] = BenchSource.canvas,
    stats_json: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
    workers: Annotated[
        list[int] | None,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Instead: the whole receiver loop with this many decode processes (the receiver's own "
            "counted, as in `stream receive`), fed by senders that cost nothing (repeat to alternate, e.g. "
            "--workers 1 --workers 2).",
        ),
    ] = None,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, help="With --workers: times each count runs (ABAB).")
    ] = 2,
    senders: Annotated[int, typer.Option("--senders", min=1, help="With --workers: distinct senders.")] = 8,
) -> None:
    """Throughput of the sender pipeline (in-memory source → send) and of the receiver's decode.

    Wall-clock rates depend on what else runs here (the load average is printed); the CPU µs per stage
    (tight loops, best of 3) give the rate one otherwise idle core reaches.

    With --workers: the whole receiver (receive thread, queues, decode in N processes, accounting) over
    prepacked digit frames, each count in turn (ABAB): wall clock, CPU µs per frame, the share of the frames
    the receiver's own process decoded, the rate that CPU time allows on this machine's idle cores and its
    ratio to the first count, and the share of the CPU other processes took meanwhile (a wall-clock rate means
    what it says only when that is near 0).
    """
    from ..benchmark.stream_bench import bench as run_bench
    from ..benchmark.stream_bench import receiver_bench

    if workers:
        results = []
        try:
            for _ in range(rounds):
                for n in workers:
                    r = receiver_bench(bundle, frames, workers=n, senders=senders, threads=threads)
                    others = "?" if r.others_pct is None else f"{r.others_pct:.0f} %"
                    typer.echo(
                        f"receiver, {n} decode process(es): {r.fps:,.0f} frames/s wall ({r.frames} frames, "
                        f"{r.dropped} dropped, {r.here_pct:.0f} % decoded in the receiver's process; other "
                        f"processes took {others} of the CPU); CPU µs/frame: main {r.cpu_main_us:.1f} + "
                        f"workers {r.cpu_workers_us:.1f} = {r.cpu_total_us:.1f} (decode call "
                        f"{r.decode_us:.1f}) -> bound {r.bound_fps:,.0f} frames/s on {r.cores} idle cores"
                        + (f"; the worker(s) ran dry {r.worker_idle_pct:.1f} % of the time" if n > 1 else "")
                    )
                    results.append(r.to_dict())
        except CaeEdgeError as e:
            raise fail(e) from None
        summary = _receiver_summary(results, workers)
        for line in summary["lines"]:
            typer.echo(line)
        write_json(stats_json, {"bundle": bundle, "runs": results, "summary": summary["by_workers"]})
        return
    try:
        r = run_bench(bundle, frames, threads=threads, source=source.value)
    except CaeEdgeError as e:
        raise fail(e) from None
    cpu = r.stage_cpu_us
    tx = ", ".join(f"{k} {cpu[k]:.1f}" for k in ("preprocess", "encode", "pack", "send"))
    rx = ", ".join(f"{k} {cpu[k]:.1f}" for k in ("unpack", "decode"))
    typer.echo(f"bundle {r.pair_id}, {r.source} frames {r.frame_shape}, load average {r.load_avg:.1f}")
    typer.echo(
        f"sender:   {r.sender_fps_cpu:,.0f} frames/s per idle core (CPU µs/frame: {tx}; "
        f"total {r.sender_cpu_us:.1f}); wall clock here {r.sender_fps:,.0f} frames/s"
    )
    typer.echo(
        f"receiver: {r.receiver_fps_cpu:,.0f} frames/s per idle core (CPU µs/frame: {rx}; "
        f"total {r.receiver_cpu_us:.1f}); wall clock here {r.receiver_fps:,.0f} frames/s"
    )
    typer.echo(f"wire:     {r.bytes_per_frame:.1f} bytes/frame (+2 B ZeroMQ framing), {r.dropped} dropped")
    write_json(stats_json, r.to_dict())


from .soak import soak as _soak  # noqa: E402  (the soak command lives in its own module)

app.command("soak")(_soak)
