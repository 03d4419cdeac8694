#!/usr/bin/env python3
"""B7 (issue 10): the release `edge-node` binary driven through its HTTP API, next to SQLite.

    cargo build --release -p edge-node && python3 benches/b7.py [--rows 1000000] [--updates N]

Starts `target/release/edge-node run` on a fresh data directory (a temporary directory,
loopback ports), creates `readings (id INTEGER PRIMARY KEY, sensor INTEGER, ts INTEGER,
value REAL)`, loads `--rows` rows in 1000-row INSERT statements over `POST /v1/sql`, and
measures: load rate, bytes per row on disk (blocks allocated to the data directory, file
length in brackets), the idle RSS of the node once it settles, cold start (SIGTERM, start
again) to the first query answered, the peak RSS while a readings x 10k-row JOIN + GROUP BY
runs, and the disk after `--updates` updates spread over every row (`UPDATE ... WHERE id
BETWEEN a AND b`, 1000 rows per statement), then again once the node's storage stops
changing (log compaction, where the build has it), with the node's storage breakdown
(`edge-node status --storage`) after each phase. SQLite (Python's sqlite3: WAL,
`synchronous=FULL`, one transaction per statement) runs the same statements on the same
rows; its query-time figures come from a child Python process, so its RSS includes the
interpreter (printed separately). Prints one table: figure | edgestore | SQLite | ratio,
where ratio = edgestore / SQLite.

Only the standard library. Every wait is bounded; the node is killed on any exit.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

ROWS_PER_STATEMENT = 1000
DIM_ROWS = 10_000
GROUPS = 50
TS_BASE = 1_750_000_000_000
JOIN_QUERY = (
    "SELECT d.grp, count(*), sum(r.value) FROM readings r JOIN dim d ON d.id = r.sensor GROUP BY d.grp ORDER BY d.grp"
)
FIRST_QUERY = "SELECT value FROM readings WHERE id = 1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class B7Error(Exception):
    """A step of the benchmark failed (the node refused a statement, did not start, ...)."""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of readings (multiple of 1000)")
    p.add_argument("--updates", type=int, help="row updates after the load (default 5 x rows)")
    p.add_argument("--binary", default=os.path.join(REPO, "target", "release", "edge-node"))
    p.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a removed temp dir")
    p.add_argument("--settle-seconds", type=float, default=20.0,
                   help="storage unchanged this long counts as compacted")
    p.add_argument("--compact-wait", type=float, default=300.0, help="longest wait for compaction (s)")
    p.add_argument("--request-timeout", type=float, default=300.0, help="per HTTP request (s)")
    p.add_argument("--skip-sqlite", action="store_true")
    args = p.parse_args()
    if args.rows <= 0 or args.rows % ROWS_PER_STATEMENT:
        p.error(f"--rows must be a positive multiple of {ROWS_PER_STATEMENT}")
    if args.updates is None:
        args.updates = 5 * args.rows
    return args


# ---------------------------------------------------------------- the same statements for both engines

READINGS_DDL = "CREATE TABLE readings (id INTEGER PRIMARY KEY, sensor INTEGER, ts INTEGER, value REAL)"


def dim_statements():
    """The JOIN's 10k-row table, created after the load's figures (they count readings only)."""
    yield "CREATE TABLE dim (id INTEGER PRIMARY KEY, name TEXT, grp INTEGER)"
    for start in range(0, DIM_ROWS, ROWS_PER_STATEMENT):
        values = ", ".join(f"({i}, 'sensor-{i}', {i % GROUPS})" for i in range(start, start + ROWS_PER_STATEMENT))
        yield f"INSERT INTO dim VALUES {values}"


def reading_insert(start):
    """Rows start+1 ..= start+1000: sensor spread over dim by a multiplicative hash."""
    rows = []
    for i in range(start + 1, start + ROWS_PER_STATEMENT + 1):
        sensor = ((i * 2654435761) >> 7) % DIM_ROWS
        rows.append(f"({i}, {sensor}, {TS_BASE + i * 1000}, {(i % 1000) * 0.25})")
    return "INSERT INTO readings VALUES " + ", ".join(rows)


def update_statements(rows, updates):
    """`updates` row updates in passes over every row, 1000 rows per statement."""
    done = 0
    while done < updates:
        for start in range(0, rows, ROWS_PER_STATEMENT):
            n = min(ROWS_PER_STATEMENT, updates - done)
            if n <= 0:
                return
            yield f"UPDATE readings SET value = value + 1 WHERE id BETWEEN {start + 1} AND {start + n}", n
            done += n


# ---------------------------------------------------------------- measuring

def timed(run, statements):
    """Seconds spent in run(statement) over every statement: the engine's time, without
    Python building the statements' text (the same for both engines)."""
    total = 0.0
    for statement in statements:
        t0 = time.monotonic()
        run(statement)
        total += time.monotonic() - t0
    return total


def disk_usage(path):
    """(blocks allocated in bytes, file length) of every file under path."""
    allocated = length = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            allocated += st.st_blocks * 512
            length += st.st_size
    return allocated, length


def proc_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def reset_peak(pid):
    """Resets VmHWM (Linux: 5 to clear_refs); False where not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def settled_rss_kib(pid, window=5, limit_s=60.0):
    """VmRSS once five 1 s samples lie within 1 MiB (or after limit_s)."""
    samples = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        samples.append(proc_status_kib(pid, "VmRSS"))
        recent = samples[-window:]
        if len(recent) == window and max(recent) - min(recent) <= 1024:
            break
        time.sleep(1.0)
    return samples[-1]


class PeakSampler:
    """Samples VmRSS of pid every 5 ms on a thread, for a query's peak."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status_kib(self.pid, "VmRSS"))
            self._stop.wait(0.005)

    def __enter__(self):
        reset_peak(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, proc_status_kib(self.pid, "VmHWM"))


def free_port(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the node

class Node:
    """One `edge-node run` child on a data directory, with an HTTP connection to its API."""

    def __init__(self, binary, data_dir, log_path, request_timeout):
        self.binary, self.data_dir, self.log_path = binary, data_dir, log_path
        self.request_timeout = request_timeout
        self.api_port = free_port(socket.SOCK_STREAM)
        self.sync_port = free_port(socket.SOCK_DGRAM)
        self.proc, self.conn = None, None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--data-dir", self.data_dir, "run",
             "--sync-listen", f"127.0.0.1:{self.sync_port}", "--api-listen", f"127.0.0.1:{self.api_port}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        log.close()

    def _connection(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=self.request_timeout)
        return self.conn

    def request(self, method, path, body=None):
        """(status, parsed JSON); one reconnect if the kept connection was closed."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            try:
                conn = self._connection()
                conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                return resp.status, json.loads(resp.read() or b"null")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close_connection()
                if attempt:
                    raise

    def sql(self, statement):
        status, answer = self.request("POST", "/v1/sql", {"sql": statement})
        if status != 200:
            raise B7Error(f"{statement[:80]}...: HTTP {status}: {answer}")
        return answer

    def close_connection(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def wait_answering(self, limit_s=120.0):
        """Seconds until FIRST_QUERY (or, before the table exists, /v1/health) answers 200."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:
            if self.proc.poll() is not None:
                raise B7Error(f"edge-node exited with {self.proc.returncode}; see {self.log_path}")
            try:
                status, _ = self.request("POST", "/v1/sql", {"sql": FIRST_QUERY})
                if status == 200:
                    return time.monotonic() - t0
                status, _ = self.request("GET", "/v1/health")
                if status == 200 and not self.has_readings:
                    return time.monotonic() - t0
            except (ConnectionRefusedError, OSError):
                self.close_connection()
            time.sleep(0.005)
        raise B7Error(f"edge-node did not answer within {limit_s} s; see {self.log_path}")

    has_readings = False

    def stop(self, limit_s=60.0):
        """SIGTERM, then SIGKILL after limit_s."""
        self.close_connection()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def storage_text(self):
        out = subprocess.run([self.binary, "--data-dir", self.data_dir, "status", "--storage"],
                             capture_output=True, text=True, timeout=self.request_timeout)
        return out.stdout + out.stderr

    def log_entries(self):
        """Entries of the change log (`log_v1`) and allocated bytes of all tables."""
        status, answer = self.request("GET", "/v1/storage")
        if status != 200:
            raise B7Error(f"GET /v1/storage: HTTP {status}: {answer}")
        log = next((t for t in answer["redb_tables"] if t["name"] == "log_v1"), {"entries": 0})
        return log["entries"], answer["allocated_bytes"]


def run_edgestore(args, work, figures):
    data_dir = os.path.join(work, "edge-data")
    node = Node(args.binary, data_dir, os.path.join(work, "edge-node.log"), args.request_timeout)
    try:
        node.start()
        node.wait_answering()
        node.sql(READINGS_DDL)
        load_s = timed(node.sql, (reading_insert(start) for start in range(0, args.rows, ROWS_PER_STATEMENT)))
        node.has_readings = True
        figures["load rate (rows/s)"] = args.rows / load_s
        figures["load time (s)"] = load_s
        figures["_disk_load"] = disk_usage(data_dir)
        figures["idle RSS after load (MiB)"] = settled_rss_kib(node.proc.pid) / 1024
        print("\n-- edgestore storage after load --\n" + node.storage_text(), flush=True)
        for statement in dim_statements():
            node.sql(statement)

        node.stop()
        node.start()
        figures["cold start to first query (ms)"] = node.wait_answering() * 1000
        figures["idle RSS after restart (MiB)"] = settled_rss_kib(node.proc.pid) / 1024

        with PeakSampler(node.proc.pid) as peak:
            t0 = time.monotonic()
            answer = node.sql(JOIN_QUERY)
            figures["JOIN + GROUP BY time (ms)"] = (time.monotonic() - t0) * 1000
        figures["peak RSS during JOIN (MiB)"] = peak.peak / 1024
        figures["_join"] = [(r[0], r[1], round(r[2], 3)) for r in answer["rows"]]

        update_s = timed(node.sql, (statement for statement, _n in update_statements(args.rows, args.updates)))
        figures["update rate (rows/s)"] = args.updates / update_s
        figures["_disk_updates"] = disk_usage(data_dir)
        print("\n-- edgestore storage after updates --\n" + node.storage_text(), flush=True)

        waited = wait_compacted(node, args)
        figures["_compact_wait"] = waited
        figures["_disk_compacted"] = disk_usage(data_dir)
        figures["idle RSS after updates (MiB)"] = settled_rss_kib(node.proc.pid) / 1024
        print(f"\n-- edgestore storage after {waited:.0f} s of waiting for compaction --\n" + node.storage_text(),
              flush=True)
        node.stop()
    finally:
        node.kill()


def wait_compacted(node, args):
    """Polls the change log's entry count and the allocated bytes until both stay unchanged
    for --settle-seconds (or --compact-wait passes); returns the seconds waited."""
    t0 = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - t0 < args.compact_wait:
        now = node.log_entries()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= args.settle_seconds:
            break
        time.sleep(2.0)
    return time.monotonic() - t0


# ---------------------------------------------------------------- SQLite

def sqlite_connect(path):
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit: one transaction per statement
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def sqlite_child(path, mode):
    """Run in a fresh interpreter: the cold open + first query, or the JOIN, with RSS."""
    base = proc_status_kib(os.getpid(), "VmRSS")
    t0 = time.monotonic()
    conn = sqlite_connect(path)
    if mode == "first":
        conn.execute(FIRST_QUERY).fetchall()
        out = {"seconds": time.monotonic() - t0}
    else:
        reset_peak(os.getpid())
        rows = conn.execute(JOIN_QUERY).fetchall()
        out = {"seconds": time.monotonic() - t0, "rows": [(r[0], r[1], round(r[2], 3)) for r in rows]}
    out.update(python_kib=base, rss_kib=proc_status_kib(os.getpid(), "VmRSS"),
               hwm_kib=proc_status_kib(os.getpid(), "VmHWM"))
    print(json.dumps(out))


def sqlite_in_child(path, mode, timeout):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--sqlite-child", path, mode],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise B7Error(f"sqlite child failed: {out.stderr}")
    return json.loads(out.stdout)


def run_sqlite(args, work, figures):
    data_dir = os.path.join(work, "sqlite")
    os.makedirs(data_dir)
    path = os.path.join(data_dir, "b7.sqlite")
    conn = sqlite_connect(path)
    conn.execute(READINGS_DDL)
    load_s = timed(conn.execute, (reading_insert(start) for start in range(0, args.rows, ROWS_PER_STATEMENT)))
    figures["load rate (rows/s)"] = args.rows / load_s
    figures["load time (s)"] = load_s
    # Counted at rest: closing the last connection checkpoints the WAL into the file.
    conn.close()
    figures["_disk_load"] = disk_usage(data_dir)
    conn = sqlite_connect(path)
    for statement in dim_statements():
        conn.execute(statement)
    conn.close()

    first = sqlite_in_child(path, "first", args.request_timeout)
    figures["cold start to first query (ms)"] = first["seconds"] * 1000
    figures["idle RSS after restart (MiB)"] = first["rss_kib"] / 1024
    figures["_python_kib"] = first["python_kib"]
    join = sqlite_in_child(path, "join", args.request_timeout)
    figures["JOIN + GROUP BY time (ms)"] = join["seconds"] * 1000
    figures["peak RSS during JOIN (MiB)"] = join["hwm_kib"] / 1024
    figures["_join"] = [tuple(r) for r in join["rows"]]

    conn = sqlite_connect(path)
    update_s = timed(conn.execute, (statement for statement, _n in update_statements(args.rows, args.updates)))
    figures["update rate (rows/s)"] = args.updates / update_s
    conn.close()
    figures["_disk_updates"] = figures["_disk_compacted"] = disk_usage(data_dir)


# ---------------------------------------------------------------- the table

def report(args, ours, theirs):
    rows = args.rows

    def per_row(disk):
        return f"{disk[0] / rows:,.0f} ({disk[1] / rows:,.0f})"

    def mb(disk):
        return f"{disk[0] / 1e6:,.1f} MB ({disk[1] / 1e6:,.1f})"

    def ratio(a, b):
        return f"{a / b:.3g}x" if a and b else "-"

    def disk_line(name, key):
        a, b = ours.get(key), theirs.get(key)
        cells = [name, mb(a) if a else "-", mb(b) if b else "-",
                 f"{ratio(a[0], b[0])} ({ratio(a[1], b[1])})" if a and b else "-"]
        if key != "_disk_load" and a and ours.get("_disk_load"):
            cells[1] += f", {a[0] / ours['_disk_load'][0]:.2f}x load"
        return cells

    table = [["figure", "edgestore", "SQLite", "ratio"]]
    a, b = ours.get("_disk_load"), theirs.get("_disk_load")
    table.append(["bytes/row after load: allocated (length)", per_row(a) if a else "-", per_row(b) if b else "-",
                  f"{ratio(a[0], b[0])} ({ratio(a[1], b[1])})" if a and b else "-"])
    table.append(disk_line("disk after load", "_disk_load"))
    table.append(disk_line(f"disk after {args.updates:,} updates", "_disk_updates"))
    table.append(disk_line(f"  ... after {ours.get('_compact_wait', 0):.0f} s waiting for compaction",
                           "_disk_compacted"))
    for key in ["load rate (rows/s)", "update rate (rows/s)", "idle RSS after load (MiB)",
                "idle RSS after restart (MiB)", "idle RSS after updates (MiB)", "cold start to first query (ms)",
                "JOIN + GROUP BY time (ms)", "peak RSS during JOIN (MiB)"]:
        a, b = ours.get(key), theirs.get(key)
        fmt = (lambda v: f"{v:,.0f}") if "rows/s" in key or "ms" in key else (lambda v: f"{v:,.1f}")
        table.append([key, fmt(a) if a is not None else "-", fmt(b) if b is not None else "-", ratio(a, b)])
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    print(f"\nB7: {rows:,} rows, {args.updates:,} updates, binary {args.binary}")
    print(f"commit {git_commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; ratio = edgestore / SQLite")
    for i, r in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if "_python_kib" in theirs:
        print(f"SQLite's RSS figures are a python3 child process (the interpreter alone: "
              f"{theirs['_python_kib'] / 1024:.1f} MiB)")
    if ours.get("_join") and theirs.get("_join"):
        same = [r[:2] for r in ours["_join"]] == [tuple(r[:2]) for r in theirs["_join"]]
        print("JOIN answers agree (groups and counts)" if same else "JOIN ANSWERS DIFFER")


def git_commit():
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--sqlite-child":
        sqlite_child(sys.argv[2], sys.argv[3])
        return
    args = parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"{args.binary} not found: run `cargo build --release -p edge-node` first")
    work = args.keep or tempfile.mkdtemp(prefix="b7-")
    os.makedirs(work, exist_ok=True)
    ours, theirs = {}, {}
    # SIGTERM/SIGINT unwind through the finally blocks, which kill the node.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        print(f"B7 in {work}: edgestore", flush=True)
        run_edgestore(args, work, ours)
        if not args.skip_sqlite:
            print("B7: SQLite", flush=True)
            run_sqlite(args, work, theirs)
        report(args, ours, theirs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except B7Error as error:
        sys.exit(f"b7: {error}")
