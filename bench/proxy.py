#!/usr/bin/env python3
"""Counting (and optionally delaying) TCP proxy for the dropship benchmark.

usage: proxy.py LISTEN_PORT TARGET_PORT DELAY_MS STATSFILE

Listens on 127.0.0.1:LISTEN_PORT and forwards every connection to
127.0.0.1:TARGET_PORT. Python 3 stdlib only.

* Counts bytes per connection in both directions. STATSFILE gets one JSON line
  when a connection opens and one when it is fully closed:
      {"ev": "open",  "id": 7, "t": <unix time>}
      {"ev": "close", "id": 7, "t": <unix time>, "c2s": <bytes>, "s2c": <bytes>}
  ("c2s" = client -> server = what the deploying side sent.)
* DELAY_MS > 0 adds DELAY_MS/2 of latency to each direction (so 50 -> 50 ms RTT).
  The delay is applied by a per-direction FIFO of (due time, chunk): the reader
  keeps reading as fast as data arrives and stamps each chunk, a separate writer
  thread sends each chunk once it is due. Throughput is therefore not capped by
  the delay (no sleep-per-chunk in the read loop); only latency is added.
  There is no bandwidth limit.

Stops on SIGTERM/SIGINT.
"""
import collections
import json
import os
import signal
import socket
import sys
import threading
import time

BUF = 256 * 1024


class Stats:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.f = open(path, "a", buffering=1)

    def write(self, obj):
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with self.lock:
            self.f.write(line)
            self.f.flush()


class DelayedPipe:
    """One direction of a connection: src -> dst with an optional fixed delay."""

    def __init__(self, src, dst, delay_s, done_cb):
        self.src, self.dst, self.delay = src, dst, delay_s
        self.count = 0
        self.done_cb = done_cb
        self.q = collections.deque()
        self.cv = threading.Condition()
        self.eof = False

    def start(self):
        if self.delay > 0:
            threading.Thread(target=self._writer, daemon=True).start()
        threading.Thread(target=self._reader, daemon=True).start()

    def _finish_write_side(self):
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.done_cb()

    def _reader(self):
        try:
            while True:
                data = self.src.recv(BUF)
                if not data:
                    break
                self.count += len(data)
                if self.delay > 0:
                    due = time.monotonic() + self.delay
                    with self.cv:
                        self.q.append((due, data))
                        self.cv.notify()
                else:
                    self.dst.sendall(data)
        except OSError:
            pass
        if self.delay > 0:
            with self.cv:
                self.eof = True
                self.cv.notify()
        else:
            self._finish_write_side()

    def _writer(self):
        try:
            while True:
                with self.cv:
                    while not self.q and not self.eof:
                        self.cv.wait()
                    if not self.q and self.eof:
                        break
                    due, data = self.q.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                # coalesce chunks that are already due as well (fewer syscalls)
                parts, size = [data], len(data)
                with self.cv:
                    now = time.monotonic()
                    while self.q and self.q[0][0] <= now and size < 4 * BUF:
                        d = self.q.popleft()[1]
                        parts.append(d)
                        size += len(d)
                self.dst.sendall(b"".join(parts) if len(parts) > 1 else data)
        except OSError:
            pass
        self._finish_write_side()


class Conn:
    ids = 0
    ids_lock = threading.Lock()

    def __init__(self, client, target_port, delay_s, stats):
        with Conn.ids_lock:
            Conn.ids += 1
            self.id = Conn.ids
        self.client, self.stats = client, stats
        self.left = 2
        self.lock = threading.Lock()
        stats.write({"ev": "open", "id": self.id, "t": time.time()})
        try:
            self.server = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            stats.write({"ev": "close", "id": self.id, "t": time.time(), "c2s": 0, "s2c": 0, "err": "connect"})
            return
        for s in (client, self.server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.up = DelayedPipe(client, self.server, delay_s, self._half_done)
        self.down = DelayedPipe(self.server, client, delay_s, self._half_done)
        self.up.start()
        self.down.start()

    def _half_done(self):
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            for s in (self.client, self.server):
                try:
                    s.close()
                except OSError:
                    pass
            self.stats.write({"ev": "close", "id": self.id, "t": time.time(),
                              "c2s": self.up.count, "s2c": self.down.count})


def main():
    if len(sys.argv) != 5:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
    delay_s = float(sys.argv[3]) / 2000.0
    stats = Stats(sys.argv[4])

    def stop(*_):
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen_port))
    ls.listen(128)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=Conn, args=(c, target_port, delay_s, stats), daemon=True).start()


if __name__ == "__main__":
    main()
