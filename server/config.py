"""Settings of the server: every option of `python run.py --help`, each with an env variable."""

from __future__ import annotations

import argparse
import base64
import binascii
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from cryptography.fernet import Fernet

from .redis_link import RedisAddress

log = logging.getLogger(__name__)

DEFAULT_USERS = {"alice": "wonderland", "bob": "builder"}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    redis_timeout: float = 1.5
    session_max_age: int = 86400
    allowed_origins: tuple[str, ...] = ()
    max_message_size: int = 1 << 16
    secure_cookies: bool = False
    heartbeat: float = 25.0
    log_level: str = "info"
    loop: str = "auto"  # auto (uvloop when installed), asyncio, uvloop
    log_format: str = "text"  # text, json
    metrics: bool = False  # GET /metrics (Prometheus)
    metrics_port: int | None = None  # ... on a port of its own instead of `port`
    workers: int = 1
    reuse_port: bool = False  # set by the supervisor of --workers for each worker
    session_check_interval: float = 15.0
    rate_limit: float = 100.0
    rate_limit_bytes: float = 64 << 10
    max_sockets_per_user: int = 5000
    max_rooms_per_socket: int = 100
    send_limit: int = 1 << 20
    instance_ttl: float = 10.0
    history_size: int = 100
    history_ttl: float = 300.0
    presence: bool = True  # the demo's rooms track who is in them
    cookie_name: str = "session"
    session_key: str | None = None
    session_key_file: str = ".session_key"
    users: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _users(value: str) -> dict[str, str]:
    users = {}
    for pair in value.split(","):
        name, sep, password = pair.strip().partition(":")
        if not sep or not name or not password:
            raise argparse.ArgumentTypeError(f"DEMO_USERS wants name:password pairs separated by commas, not {pair!r}")
        users[name] = password
    return users


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from command-line options, falling back to environment variables."""
    env = environ.get
    d = Settings()
    # Defaults are strings: argparse converts them with `type`, so a bad environment value
    # is a usage error naming the option, not a traceback.
    p = argparse.ArgumentParser(
        prog="run.py",
        description="Serve the demo app: websockets that share the session of the HTTP routes.",
        epilog="Each option can also be set by the environment variable shown in capitals.",
    )
    p.add_argument("--host", default=env("HOST", d.host), help="HOST: interface to listen on (%(default)s)")
    p.add_argument("--port", type=int, default=env("PORT", str(d.port)), help="PORT (%(default)s)")
    p.add_argument("--redis", dest="redis_url", metavar="URL", default=env("REDIS_URL") or None,
                   help="REDIS_URL: keep sessions in Redis (e.g. redis://127.0.0.1:6379/0, or through "
                        "Sentinel: redis+sentinel://host:26379,host:26380/mymaster/0); unset: encrypted cookies")
    p.add_argument("--redis-timeout", type=float, metavar="SECONDS",
                   default=env("REDIS_TIMEOUT", str(d.redis_timeout)),
                   help="REDIS_TIMEOUT: Redis counts as unreachable when it does not answer a ping "
                        "within this; nothing waits for it longer than about 4/3 of it (%(default)s)")
    p.add_argument("--session-max-age", type=int, metavar="SECONDS",
                   default=env("SESSION_MAX_AGE", str(d.session_max_age)),
                   help="SESSION_MAX_AGE: a session ends this long after login (%(default)s)")
    p.add_argument("--allowed-origin", dest="allowed_origins", action="append", metavar="ORIGIN",
                   help="ALLOWED_ORIGINS (comma-separated): another origin, exactly scheme://host[:port], "
                        "that may open sockets and call the API with credentials; repeatable")
    p.add_argument("--max-message-size", type=int, metavar="BYTES",
                   default=env("MAX_MESSAGE_SIZE", str(d.max_message_size)),
                   help="MAX_MESSAGE_SIZE: larger frames close the socket with 1009 (%(default)s)")
    p.add_argument("--secure-cookies", action="store_true", default=_flag(env("SECURE_COOKIES")),
                   help="SECURE_COOKIES=1: mark the session cookie Secure (when served over HTTPS)")
    p.add_argument("--heartbeat", type=float, metavar="SECONDS", default=env("HEARTBEAT", str(d.heartbeat)),
                   help="HEARTBEAT: ping every socket this often, close it if no pong (%(default)s; 0: off)")
    p.add_argument("--log-format", choices=("text", "json"), default=env("LOG_FORMAT", d.log_format),
                   help="LOG_FORMAT: text lines, or one JSON object per line (%(default)s)")
    p.add_argument("--metrics", action="store_true", default=_flag(env("METRICS")),
                   help="METRICS=1: serve Prometheus metrics at GET /metrics (needs prometheus_client: "
                        "pip install '.[metrics]')")
    p.add_argument("--metrics-port", type=int, metavar="PORT", default=env("METRICS_PORT") or None,
                   help="METRICS_PORT: serve /metrics on this port of --host instead of the main port "
                        "(implies --metrics); with --workers N, worker k serves it on PORT+k-1")
    p.add_argument("--workers", type=int, metavar="N", default=env("WORKERS", str(d.workers)),
                   help="WORKERS: processes serving one port (SO_REUSEPORT), restarted when one dies; "
                        "more than 1 needs --redis (%(default)s)")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default=env("LOOP", d.loop),
                   help="LOOP: the event loop; auto takes uvloop when it is installed "
                        "(pip install '.[speed]') (%(default)s)")
    p.add_argument("--log-level", default=env("LOG_LEVEL", d.log_level),
                   choices=["debug", "info", "warning", "error"], type=str.lower, help="LOG_LEVEL (%(default)s)")
    p.add_argument("--session-check-interval", type=float, metavar="SECONDS",
                   default=env("SESSION_CHECK_INTERVAL", str(d.session_check_interval)),
                   help="SESSION_CHECK_INTERVAL: how often idle sockets' sessions are checked for "
                        "expiry and logout (%(default)s)")
    p.add_argument("--rate-limit", type=float, metavar="EVENTS", default=env("RATE_LIMIT", str(d.rate_limit)),
                   help="RATE_LIMIT: events a second read from one socket, bursts of twice that; a user's "
                        "sockets share 4 times that; beyond it reading waits (%(default)s; 0: no limit)")
    p.add_argument("--rate-limit-bytes", type=float, metavar="BYTES",
                   default=env("RATE_LIMIT_BYTES", str(d.rate_limit_bytes)),
                   help="RATE_LIMIT_BYTES: the same in bytes a second (%(default)s; 0: no limit)")
    p.add_argument("--max-sockets-per-user", type=int, metavar="N",
                   default=env("MAX_SOCKETS_PER_USER", str(d.max_sockets_per_user)),
                   help="MAX_SOCKETS_PER_USER: sockets one user may have open in this process; "
                        "more are closed with 4429 (%(default)s)")
    p.add_argument("--max-rooms-per-socket", type=int, metavar="N",
                   default=env("MAX_ROOMS_PER_SOCKET", str(d.max_rooms_per_socket)),
                   help="MAX_ROOMS_PER_SOCKET: rooms one socket may join; more: limit_reached (%(default)s)")
    p.add_argument("--send-limit", type=int, metavar="BYTES", default=env("SEND_LIMIT", str(d.send_limit)),
                   help="SEND_LIMIT: bytes waiting for a client that does not read before it is "
                        "closed with 4408 (%(default)s)")
    p.add_argument("--instance-ttl", type=float, metavar="SECONDS",
                   default=env("INSTANCE_TTL", str(d.instance_ttl)),
                   help="INSTANCE_TTL: with --redis, a crashed process's sockets stop counting in "
                        "room sizes after this long (%(default)s)")
    p.add_argument("--history-size", type=int, metavar="N", default=env("HISTORY_SIZE", str(d.history_size)),
                   help="HISTORY_SIZE: events kept per room, so a socket that dropped off gets what it "
                        "missed when it rejoins (%(default)s; 0: no history, no positions)")
    p.add_argument("--history-ttl", type=float, metavar="SECONDS", default=env("HISTORY_TTL", str(d.history_ttl)),
                   help="HISTORY_TTL: how long a room event is kept for that (%(default)s; 0: no history)")
    p.add_argument("--presence", choices=("on", "off"), default=env("PRESENCE", "on" if d.presence else "off"),
                   help="PRESENCE: track who is in each room and push joins and leaves to its "
                        "members (protocol.md, \"Presence\"); off saves its cost (%(default)s)")
    args = p.parse_args(argv)
    if args.history_size < 0 or args.history_ttl < 0:
        p.error("--history-size and --history-ttl must be 0 or more")

    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.workers > 1 and not args.redis_url:
        p.error(f"--workers {args.workers} needs --redis: without Redis, nothing would carry sessions, "
                "logouts, rooms and emits from one worker to the others")
    if args.workers > 1 and args.metrics and args.metrics_port is None:
        p.error(f"--metrics with --workers {args.workers} needs --metrics-port: on the shared port a scrape "
                "would reach one worker at random")
    if args.redis_timeout <= 0:
        p.error("--redis-timeout must be more than 0 seconds")
    if args.redis_url:
        try:
            RedisAddress.from_url(args.redis_url)
        except ValueError as exc:
            p.error(f"--redis: {exc}")
    origins = args.allowed_origins
    if origins is None:
        origins = [o.strip() for o in env("ALLOWED_ORIGINS", "").split(",") if o.strip()]
    for origin in origins:
        if "://" not in origin or origin.endswith("/"):
            p.error(f"--allowed-origin wants scheme://host[:port] exactly, not {origin!r}")
    demo_users = env("DEMO_USERS")
    try:
        users = _users(demo_users) if demo_users else dict(DEFAULT_USERS)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    return Settings(
        host=args.host,
        port=args.port,
        redis_url=args.redis_url,
        redis_timeout=args.redis_timeout,
        session_max_age=args.session_max_age,
        allowed_origins=tuple(origins),
        max_message_size=args.max_message_size,
        secure_cookies=args.secure_cookies,
        heartbeat=args.heartbeat,
        log_level=args.log_level,
        workers=args.workers,
        reuse_port=args.reuse_port,
        loop=args.loop,
        log_format=args.log_format,
        metrics=args.metrics or args.metrics_port is not None,
        metrics_port=args.metrics_port,
        session_check_interval=args.session_check_interval,
        rate_limit=args.rate_limit,
        rate_limit_bytes=args.rate_limit_bytes,
        max_sockets_per_user=args.max_sockets_per_user,
        max_rooms_per_socket=args.max_rooms_per_socket,
        send_limit=args.send_limit,
        instance_ttl=args.instance_ttl,
        history_size=args.history_size,
        history_ttl=args.history_ttl,
        presence=args.presence == "on",
        session_key=env("SESSION_KEY") or None,
        session_key_file=env("SESSION_KEY_FILE", d.session_key_file),
        users=users,
    )


def load_fernet(settings: Settings) -> Fernet:
    """The cookie encryption key: SESSION_KEY, else a key file, created (mode 0600) if missing.

    Raises:
        ValueError: the key is not a urlsafe-base64 Fernet key.
    """
    if settings.session_key:
        return _fernet(settings.session_key, "SESSION_KEY")
    path = Path(settings.session_key_file)
    try:
        fernet = _fernet(path.read_text().strip(), str(path))
    except FileNotFoundError:
        pass
    else:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("the session key file %s can be read by other users (mode %o): anyone who can read "
                        "it can forge sessions; chmod 600 it", path.resolve(), mode)
        return fernet
    key = Fernet.generate_key()
    # O_EXCL: two processes starting at once must not overwrite each other's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _fernet(path.read_text().strip(), str(path))
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    log.warning("SESSION_KEY is not set: generated a session key and kept it in %s (mode 0600) "
                "so restarts keep everyone logged in", path.resolve())
    return Fernet(key)


def _fernet(key: str, source: str) -> Fernet:
    try:
        if len(base64.urlsafe_b64decode(key)) != 32:
            raise ValueError
        return Fernet(key)
    except (ValueError, binascii.Error):
        raise ValueError(f"{source} must hold a Fernet key (32 bytes in urlsafe base64), "
                         "e.g. from: python -c 'from cryptography.fernet import Fernet; "
                         "print(Fernet.generate_key().decode())'") from None
