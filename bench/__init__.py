"""Benchmarks of issue 5: our server against raw aiohttp and python-socketio; the upgrade
storm and the soak with faults of issue 8.

`python -m bench` (or `python bench/run.py`) runs every scenario and writes
`bench/RESULTS.md`; `python -m bench --help` lists the options.

    loadgen.py          the load generator (its own process, pinned to core 1)
    soak.py             the soak's load generator: chats checked delivery by delivery
    faults.py           the soak's processes and faults (Redis restart, SIGKILL), its RESULTS section
    raw_server.py       reference: a plain aiohttp websocket server
    socketio_server.py  reference: python-socketio's AsyncServer on aiohttp
    processes.py        starting, pinning, measuring and killing processes
    run.py              the runner: scenarios, rounds, medians, RESULTS.md
    profile.py          py-spy on our server during one scenario: the top functions
"""
