"""A bounded HTTP/1.1 load generator (asyncio, keep-alive connections, no dependencies).

Sends GET ``--path`` (default /v1/users/{user}/recommendations) for the given users, in order, over ``--connections``
persistent connections, until every user is asked once or ``--max-seconds`` pass. With
``--post-every N``, every Nth request is instead a POST /v1/events of one click by that user on
a pin of ``--pin-range``. Prints one JSON line: requests, errors, seconds, requests/s and latency
percentiles in milliseconds (overall, and of the posts alone).
Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime

import numpy as np

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _post(host: str, user: int, pin: int) -> bytes:
    ts = datetime.now(UTC).isoformat()
    body = json.dumps({"events": [{"user_id": user, "pin_id": pin, "action": "click", "ts": ts}]}).encode()
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _worker(
    host: str,
    port: int,
    path: str,
    queue: asyncio.Queue,
    latencies: list,
    errors: list,
    deadline: float,
    posts: list | None = None,
    post_every: int = 0,
    pins: tuple[int, int] = (0, 1),
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            try:
                number, user = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            post = post_every and number % post_every == 0
            if post:
                request = _post(host, user, pins[0] + number % (pins[1] - pins[0]))
            else:
                request = f"GET {path.format(user=user)} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if post:
                posts.append(latencies[-1])
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def run(
    host: str,
    port: int,
    path: str,
    users: list[int],
    connections: int,
    max_seconds: float,
    post_every: int = 0,
    pins: tuple[int, int] = (0, 1),
) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for number, user in enumerate(users, 1):
        queue.put_nowait((number, user))
    latencies: list[float] = []
    posts: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    deadline = started + max_seconds
    await asyncio.gather(
        *(
            _worker(host, port, path, queue, latencies, errors, deadline, posts, post_every, pins)
            for _ in range(connections)
        )
    )
    seconds = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    post_ms = np.asarray(posts) * 1000
    return {
        "posts": len(posts),
        "post_p50_ms": round(float(np.percentile(post_ms, 50)), 2) if post_ms.size else None,
        "post_p99_ms": round(float(np.percentile(post_ms, 99)), 2) if post_ms.size else None,
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": round(seconds, 3),
        "requests_per_second": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if ms.size else None,
        "p90_ms": round(float(np.percentile(ms, 90)), 2) if ms.size else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if ms.size else None,
        "max_ms": round(float(ms.max()), 2) if ms.size else None,
        "connections": connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--users-file", required=True, help="one user id per line, asked in this order")
    parser.add_argument("--path", default="/v1/users/{user}/recommendations", help="request path; {user} is replaced")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--post-every", type=int, default=0, help="every Nth request posts an event (0: none)")
    parser.add_argument("--pin-range", default="0:1", help="first:end of the pin ids posted events use")
    args = parser.parse_args()
    if args.host not in LOOPBACK:
        raise SystemExit("this load generator only targets loopback addresses")
    users = [int(line) for line in open(args.users_file) if line.strip()]
    first, end = (int(x) for x in args.pin_range.split(":"))
    print(
        json.dumps(
            asyncio.run(
                run(
                    args.host,
                    args.port,
                    args.path,
                    users,
                    args.connections,
                    args.max_seconds,
                    args.post_every,
                    (first, end),
                )
            )
        )
    )


if __name__ == "__main__":
    main()
