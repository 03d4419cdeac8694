#!/usr/bin/env python3
"""B8 (issue 11): MQTT ingest of the release `edge-node` binary, next to SQLite.

    cargo build --release -p edge-node && python3 benches/b8_mqtt.py [--messages 200000]

Starts mosquitto on a loopback port (in-memory, `max_inflight_messages 1000`), then:

- edgestore: `target/release/edge-node run` on a fresh data directory with `[mqtt]`
  ingesting `b8/+/readings` into `readings (sensor INTEGER, seq INTEGER, ts INTEGER, value
  REAL, PRIMARY KEY (sensor, seq))`, the sensor taken from the topic; `--publishers`
  `mosquitto_pub -q 1 -l` processes publish `--messages` one-row JSON messages in all; the
  rate is rows / (first publish to the last row counted by `SELECT COUNT(*)`).
- SQLite FULL, same batches: Python's sqlite3 (WAL, `synchronous=FULL`) inserting the same
  rows in transactions of `--batch` rows (the node's `mqtt.batch_messages`), no broker.
- mosquitto -> SQLite: a trivial paho-mqtt subscriber (persistent session, QoS 1, manual
  acknowledgements after each committed batch of `--batch` messages or 20 ms) writing
  the same messages into SQLite FULL; skipped with a note when paho-mqtt is not
  installed (`pip install paho-mqtt`).

- the HTTP API: the same rows into a fresh node, one `INSERT` of `--batch` rows per request.
- downsampling: `avg(value)` per sensor per `time_bucket('5 minutes', ts)` over the last day of
  readings on the ingesting node (through the API, median of 5) and on SQLite's database
  (`(ts / 300000) * 300000`), answers compared.
- replication: a second node peered with the ingesting one; seconds from the ingesting node
  holding every row to equal state digests.

Bytes per row: blocks allocated to the data directory (SQLite: the database after a WAL
checkpoint); for the MQTT node both when the peer has every row and once its change log
has stayed unchanged for `--settle-seconds` (compacted up to the horizon). Prints figure | edgestore | reference | ratio (edgestore / reference).
Every wait is bounded; children are killed on any exit.
"""

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b7  # noqa: E402  (the Node harness, disk usage, free ports)

TS_BASE = 1_750_000_000_000
DDL = ("CREATE TABLE readings (sensor INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER, value REAL, "
       "PRIMARY KEY (sensor, seq))")
# `--append-only`: the edgestore nodes' table (SQLite keeps DDL, keyed as before).
DDL_APPEND = ("CREATE TABLE readings (sensor INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, "
              "value REAL) WITH (append_only = true, time_column = 'ts', bucket = 3600000)")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=200_000, help="messages (one row each), in all")
    p.add_argument("--publishers", type=int, default=4, help="mosquitto_pub processes (one sensor each)")
    p.add_argument("--append-only", action="store_true",
                   help="edgestore's table is append-only (DDL_APPEND), SQLite's stays keyed")
    p.add_argument("--batch", type=int, default=1000, help="mqtt.batch_messages, and SQLite's rows per commit")
    p.add_argument("--binary", default=os.path.join(b7.REPO, "target", "release", "edge-node"))
    p.add_argument("--limit-s", type=float, default=1800.0, help="longest wait for an ingest to finish")
    p.add_argument("--settle-seconds", type=float, default=10.0,
                   help="after replication, the change log must stay unchanged this long before bytes are counted again")
    p.add_argument("--compact-wait", type=float, default=180.0, help="longest wait for that")
    args = p.parse_args()
    if args.messages % args.publishers:
        p.error("--messages must be a multiple of --publishers")
    return args


def rows(args):
    """(sensor, seq, ts, value) of every message, publisher by publisher."""
    per = args.messages // args.publishers
    return [[(s, i, TS_BASE + i * 1000, (i % 1000) / 10.0) for i in range(per)] for s in range(args.publishers)]


def payload(row):
    _, seq, ts, value = row
    return json.dumps({"seq": seq, "ts": ts, "value": value})


class Broker:
    def __init__(self, work):
        self.port = b7.free_port(socket.SOCK_STREAM)
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
                    "max_inflight_messages 1000\nmax_queued_messages 10000000\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise b7.B7Error("mosquitto did not start (apt-get install mosquitto mosquitto-clients)")
                time.sleep(0.05)

    def publish(self, work, sensors):
        """Starts one mosquitto_pub per sensor, each fed its messages (see Publisher)."""
        publishers = []
        for sensor, messages in enumerate(sensors):
            path = os.path.join(work, f"pub-{sensor}.txt")
            with open(path, "w") as f:
                f.writelines(payload(r) + "\n" for r in messages)
            publishers.append(Publisher(self.port, f"b8/{sensor}/readings", path, len(messages)))
        return publishers

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Publisher:
    """`mosquitto_pub -q 1 -l` fed a file of lines. mosquitto_pub 2.0.11 (Debian 12) exits at
    the end of its input without sending what it still queues (of 250,000 lines from a file
    it sent 53,395), so its input stays open until it has printed (`-d`) the broker's PUBACK
    for every line."""

    def __init__(self, port, topic, path, expected):
        self.expected, self.acked, self.done = expected, 0, threading.Event()
        # stdbuf -oL: the last PUBACK lines would wait in its stdout buffer until it exits.
        self.proc = subprocess.Popen(["stdbuf", "-oL", "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-l", "-d",
                                      "-t", topic], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        threading.Thread(target=self._feed, args=(path,), daemon=True).start()
        threading.Thread(target=self._count, daemon=True).start()

    def _feed(self, path):
        with open(path, "rb") as f:
            for line in f:
                self.proc.stdin.write(line)
        self.proc.stdin.flush()
        self.done.wait()
        self.proc.stdin.close()

    def _count(self):
        for line in self.proc.stdout:
            if b"received PUBACK" in line:
                self.acked += 1
                if self.acked == self.expected:
                    self.done.set()

    def wait(self, timeout):
        if not self.done.wait(timeout):
            self.proc.kill()
            raise b7.B7Error(f"the broker acknowledged {self.acked} of {self.expected} messages")
        self.proc.wait(timeout=60)


def wait_for(what, condition, limit_s):
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > limit_s:
            raise b7.B7Error(f"timed out waiting for {what}")
        time.sleep(0.05)


def edge_node(args, work, name, config):
    data = os.path.join(work, name)
    os.makedirs(data)
    with open(os.path.join(data, "edge-node.toml"), "w") as f:
        f.write(config)
    node = b7.Node(args.binary, data, os.path.join(work, f"{name}.log"), 300)
    node.start()
    node.wait_answering()
    return node


def status(node):
    return node.request("GET", "/v1/status")[1]


def peer(node, other):
    """`edge-node peers add` on node's data directory: node dials other."""
    theirs = status(other)
    subprocess.run([node.binary, "--data-dir", node.data_dir, "peers", "add", theirs["node_id"],
                    theirs["sync_addr"]], check=True, capture_output=True, timeout=60)


def run_edgestore(args, work, broker, sensors):
    """Ingest on node a, with node b replicating from it; then the downsampling query on a."""
    a = edge_node(args, work, "edge-a",
                  f'[mqtt]\nbroker = "mqtt://127.0.0.1:{broker.port}"\nbatch_messages = {args.batch}\n'
                  '[[mqtt.ingest]]\ntopic = "b8/+/readings"\ntable = "readings"\n'
                  'columns_from_topic = { "1" = "sensor" }\n')
    b = edge_node(args, work, "edge-b", "")
    try:
        peer(a, b)
        peer(b, a)
        a.sql(node_ddl(args))
        wait_for("the subscription", lambda: status(a)["mqtt"]["subscribed"], 60)
        t0 = time.monotonic()
        publishers = broker.publish(work, sensors)
        count = lambda: a.sql("SELECT COUNT(*) FROM readings")["rows"][0][0]  # noqa: E731
        wait_for("edgestore to hold every row", lambda: count() == args.messages, args.limit_s)
        ingested = time.monotonic()
        wait_for("b's digest to equal a's", lambda: status(a)["digest"] == status(b)["digest"], args.limit_s)
        replicated = time.monotonic()
        for p in publishers:
            p.wait(60)
        mqtt = status(a)["mqtt"]
        downsample = timed_query(lambda: a.sql(downsample_sql("time_bucket('5 minutes', ts)"))["rows"])
        at_ingest = b7.disk_usage(a.data_dir)[0] / args.messages
        waited = b7.wait_compacted(a, args)
        storage = a.storage_text()
        a.stop()
        return {"rate": args.messages / (ingested - t0), "bytes": at_ingest,
                "bytes_settled": b7.disk_usage(a.data_dir)[0] / args.messages, "settled_s": waited, "storage": storage,
                "replication_s": replicated - ingested, "downsample": downsample, "status": mqtt}
    finally:
        a.stop()
        b.stop()


def run_api(args, work, sensors):
    """The same rows through `POST /v1/sql`, one multi-row INSERT of `--batch` rows per request."""
    node = edge_node(args, work, "edge-api", "")
    try:
        node.sql(node_ddl(args))
        every = [r for s in sensors for r in s]
        t0 = time.monotonic()
        for start in range(0, len(every), args.batch):
            values = ",".join(f"({s},{q},{t},{v!r})" for s, q, t, v in every[start:start + args.batch])
            node.sql(f"INSERT INTO readings VALUES {values}")
        seconds = time.monotonic() - t0
        node.stop()
        return {"rate": len(every) / seconds, "bytes": b7.disk_usage(node.data_dir)[0] / len(every)}
    finally:
        node.stop()


def downsample_sql(bucket):
    """Average per sensor per 5 minutes over the last day of readings."""
    last = TS_BASE + 86_400_000 * 2
    return (f"SELECT sensor, {bucket} AS b, avg(value) FROM readings WHERE ts >= {last} "
            f"AND ts < {last + 86_400_000} GROUP BY sensor, b ORDER BY sensor, b")


def timed_query(run, times=5):
    """(median seconds of `times` runs, rows of the last run)."""
    seconds = []
    for _ in range(times):
        t0 = time.monotonic()
        rows = run()
        seconds.append(time.monotonic() - t0)
    return sorted(seconds)[times // 2], rows


def node_ddl(args):
    return DDL_APPEND if args.append_only else DDL


def sqlite_open(path):
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(DDL)
    return db


def sqlite_bytes(db, path):
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return os.stat(path).st_blocks * 512


def run_sqlite(args, work, sensors):
    path = os.path.join(work, "same-batches.db")
    db = sqlite_open(path)
    every = [r for s in sensors for r in s]
    t0 = time.monotonic()
    for start in range(0, len(every), args.batch):
        db.execute("BEGIN")
        db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?)", every[start:start + args.batch])
        db.execute("COMMIT")
    seconds = time.monotonic() - t0
    downsample = timed_query(lambda: db.execute(downsample_sql("(ts / 300000) * 300000")).fetchall())
    return {"rate": len(every) / seconds, "bytes": sqlite_bytes(db, path) / len(every), "downsample": downsample}


def run_paho_subscriber(args, work, broker, sensors):
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        return None
    path = os.path.join(work, "subscriber.db")
    db = sqlite_open(path)
    lock, held, stored = threading.Lock(), [], [0]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="b8-sqlite", clean_session=False,
                         manual_ack=True)
    client.max_inflight_messages_set(1000)

    def flush():
        with lock:
            batch, held[:] = list(held), []
        if not batch:
            return
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?)",
                       [(int(m.topic.split("/")[1]), *json.loads(m.payload).values()) for m in batch])
        db.execute("COMMIT")
        for m in batch:
            client.ack(m.mid, m.qos)
        stored[0] += len(batch)

    def on_message(_client, _userdata, message):
        with lock:
            held.append(message)

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, *a: c.subscribe("b8/+/readings", qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        if not subscribed.wait(30):
            raise b7.B7Error("the paho subscriber did not subscribe")
        t0 = time.monotonic()
        publishers = broker.publish(work, sensors)
        deadline = t0 + args.limit_s
        while stored[0] < args.messages:
            if time.monotonic() > deadline:
                raise b7.B7Error("the paho subscriber did not receive every message")
            if len(held) < args.batch:
                time.sleep(0.02)
            flush()
        seconds = time.monotonic() - t0
        for p in publishers:
            p.wait(60)
    finally:
        client.loop_stop()
        client.disconnect()
    return {"rate": args.messages / seconds, "bytes": sqlite_bytes(db, path) / args.messages}


def main():
    args = parse_args()
    sensors = rows(args)
    with tempfile.TemporaryDirectory(prefix="b8-") as work:
        broker = Broker(work)
        try:
            ours = run_edgestore(args, work, broker, sensors)
            api = run_api(args, work, sensors)
            same = run_sqlite(args, work, sensors)
            paho = run_paho_subscriber(args, work, broker, sensors)
        finally:
            broker.stop()
    print(f"B8 MQTT ingest: {args.messages} one-row messages, {args.publishers} publishers, batches of {args.batch}, "
          f"commit {b7.git_commit()}")
    print(f"edgestore mqtt status: {json.dumps(ours['status'])}")
    print(f"the MQTT node's storage once settled (edge-node status --storage):\n{ours['storage']}")
    print("| figure | edgestore | reference | ratio |\n|---|---|---|---|")
    for name, ref in [("SQLite FULL, same batches", same), ("mosquitto -> paho -> SQLite FULL", paho)]:
        if ref is None:
            print(f"| {name} | | skipped: pip install paho-mqtt | |")
            continue
        print(f"| MQTT rows/s vs {name} | {ours['rate']:,.0f} | {ref['rate']:,.0f} | {ours['rate'] / ref['rate']:.3f}x |")
        print(f"| MQTT bytes/row vs {name} | {ours['bytes']:,.0f} | {ref['bytes']:,.0f} | "
              f"{ours['bytes'] / ref['bytes']:.1f}x |")
    print(f"| MQTT bytes/row once the change log settled ({ours['settled_s']:.0f} s later) vs SQLite FULL | "
          f"{ours['bytes_settled']:,.0f} | {same['bytes']:,.0f} | {ours['bytes_settled'] / same['bytes']:.1f}x |")
    print(f"| HTTP API rows/s vs SQLite FULL, same batches | {api['rate']:,.0f} | {same['rate']:,.0f} | "
          f"{api['rate'] / same['rate']:.3f}x |")
    print(f"| HTTP API bytes/row vs SQLite | {api['bytes']:,.0f} | {same['bytes']:,.0f} | "
          f"{api['bytes'] / same['bytes']:.1f}x |")
    (ours_s, ours_rows), (sqlite_s, sqlite_rows) = ours["downsample"], same["downsample"]
    agree = len(ours_rows) == len(sqlite_rows) and all(
        o[0] == t[0] and abs(o[2] - t[2]) < 1e-9 for o, t in zip(ours_rows, sqlite_rows))
    print(f"| downsampling (avg per sensor per 5 min, last day; {len(ours_rows)} groups, "
          f"{'same' if agree else 'DIFFERENT'} answers), ms | {ours_s * 1000:,.1f} | {sqlite_s * 1000:,.1f} | "
          f"{ours_s / sqlite_s:.2f}x |")
    print(f"| replication to a second node: last row stored on a -> equal digests, s | "
          f"{ours['replication_s']:.2f} | | |")

if __name__ == "__main__":
    main()
