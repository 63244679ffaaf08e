"""Where our server spends its CPU in one scenario: py-spy samples it while the load
generator drives it, then the top functions are printed (own time and inclusive).

    pip install py-spy
    python -m bench.profile a            # echo, cookie storage (b: Redis, c: fan-out, d: handshakes)
    python -m bench.profile b --seconds 8 --top 30

py-spy needs to attach to the server (ptrace): run it as root or with CAP_SYS_PTRACE.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.processes import ROOT, Processes, pinned, python, raise_open_files, start_redis
from bench.run import LOADGEN_CORE, SERVERS, start_server

SCENARIOS = {  # letter -> (server, load generator scenario, connections)
    "a": ("ours", "echo", 50),
    "b": ("ours-redis", "echo", 50),
    "c": ("ours", "fanout", 1000),
    "d": ("ours", "handshake", 10),
    "d-redis": ("ours-redis", "handshake", 10),
}


def top(folded: Path, count: int, only: str | None) -> str:
    """Own and inclusive time per function from py-spy's raw (folded) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        samples = int(n)
        total += samples
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(count)]
    lines += ["", "inclusive time" + (f" (frames of {only}/ only)" if only else "") + ":"]
    shown = [(f, n) for f, n in inclusive.most_common() if only is None or f"({only}/" in f]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in shown[:count]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--seconds", type=float, default=6.0, help="how long py-spy samples")
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    raise_open_files()
    from cryptography.fernet import Fernet
    env = {"SESSION_KEY": Fernet.generate_key().decode()}
    key, scenario, connections = SCENARIOS[args.scenario]
    server = SERVERS[key]
    with Processes() as procs:
        redis_url = start_redis(procs, LOADGEN_CORE)[1] if server.redis else None
        running = start_server(procs, server, redis_url, env)
        pid = running.pids[0]
        loadgen = subprocess.Popen(pinned(
            [python(), "-m", "bench.loadgen", scenario, "--proto", server.proto, "--url", running.urls[0],
             "--pid", str(pid), "--connections", str(connections), "--warmup", "2",
             "--duration", str(args.seconds + 2)], LOADGEN_CORE), cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            folded = Path(tempfile.mkdtemp(prefix="bench-profile-")) / "server.folded"
            subprocess.run(["sleep", "3"], check=True)  # connected and warmed up
            subprocess.run(pinned(["py-spy", "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
                                   "--rate", str(args.rate), "--format", "raw", "--output", str(folded),
                                   "--nonblocking"], LOADGEN_CORE), check=True, capture_output=True)
            loadgen.wait(args.seconds + 60)
        finally:
            if loadgen.poll() is None:
                loadgen.kill()
                loadgen.wait()
    print(f"scenario {args.scenario}: {server.label}, load generator `{scenario}` with {connections} sockets")
    print(top(folded, args.top, None))
    print()
    print(top(folded, args.top, "server").split("inclusive time", 1)[1].join(["inclusive time", ""]))


if __name__ == "__main__":
    main()
