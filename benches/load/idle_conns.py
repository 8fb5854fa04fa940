#!/usr/bin/env python3
"""Opens N keep-alive connections to HOST:PORT, sends one request on each, reads the
answer, and keeps them all open and idle for HOLD seconds (then closes them and exits).

Prints "READY <open>" once every connection has been answered (or has failed), so the
caller can measure the proxy's VmRSS while the connections sit idle; SIGUSR1 closes them. Bounded: each
connect/answer has a 5 s timeout and the whole run ends after HOLD seconds.

Usage: idle_conns.py HOST PORT PATH N HOLD_SECONDS
"""
import asyncio
import signal
import sys


async def one(host, port, path, sem, conns):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            w.write(f"GET {path} HTTP/1.1\r\nHost: bench.local\r\n\r\n".encode())
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(r.readexactly(length), 5)
            conns.append(w)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass


async def main():
    host, port, path, n, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    conns = []
    sem = asyncio.Semaphore(256)
    await asyncio.gather(*(one(host, port, path, sem, conns) for _ in range(n)))
    print(f"READY {len(conns)}", flush=True)
    # Hold them open until told to stop (SIGUSR1 or SIGTERM) or HOLD seconds pass.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), hold)
    except asyncio.TimeoutError:
        pass
    for w in conns:
        w.close()
    print(f"CLOSED {len(conns)}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
