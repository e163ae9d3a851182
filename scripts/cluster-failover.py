#!/usr/bin/env python3
"""Failover time of a cluster, as a client sees it.

    scripts/cluster-failover.py ROOKERY_BIN [ROUNDS] [LEASE_MS]

Two nodes of the demo app over a fresh PostgreSQL (scripts/postgres.sh). A client increments
one counter without pause through the node that does not own it (forwarded to the owner); each
round kills the owner with SIGKILL, measures the gap between the client's last acknowledged
increment before the kill and its first one after, and restarts the killed node. Prints each
gap, their p50/p99, and checks that the counter holds every acknowledged increment.
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

here = os.path.dirname(os.path.abspath(__file__))
binary = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
lease_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 2000

root = tempfile.mkdtemp(prefix="rookery-failover.")
os.chmod(root, 0o755)
pg = os.path.join(root, "pg")
url = subprocess.check_output([os.path.join(here, "postgres.sh"), "start", pg], text=True).strip()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


demo = open(os.path.join(here, "..", "examples", "demo.toml")).read()
config = os.path.join(root, "rookery.toml")
with open(config, "w") as f:
    f.write(demo + f'\n[cluster]\ndatabase_url = "{url}"\nnode_id = "x"\nadvertise = "http://x"\nlease_ms = {lease_ms}\n')

nodes = {}  # id -> (port, process)


def start(node_id, port):
    proc = subprocess.Popen(
        [binary, "serve", "--config", config, "--listen", f"127.0.0.1:{port}",
         "--data-dir", os.path.join(root, node_id), "--node-id", node_id,
         "--advertise", f"http://127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            nodes[node_id] = (port, proc)
            return
        except Exception:
            time.sleep(0.02)
    raise SystemExit(f"{node_id} never got ready")


def owner():
    out = subprocess.check_output(
        ["psql", "-At", url, "-c",
         "SELECT o.node_id FROM rookery_objects o JOIN rookery_nodes n ON n.session = o.session "
         "WHERE o.class = 'Counter' AND n.lease_until > now()"], text=True).strip()
    return out or None


def increment(port):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/counter/failover/increment", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["value"]


acked = 0
sent = 0
try:
    start("a", free_port())
    start("b", free_port())
    increment(nodes["a"][0])
    acked = sent = 1
    gaps = []
    for r in range(rounds):
        own = owner()
        while own is None:
            time.sleep(0.05)
            own = owner()
        other = "b" if own == "a" else "a"
        via = nodes[other][0]
        last_ok = None
        # Some acknowledged increments through the other node (forwarded to the owner).
        for _ in range(20):
            sent += 1
            increment(via)
            acked += 1
            last_ok = time.monotonic()
        port, proc = nodes.pop(own)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while True:
            sent += 1
            try:
                increment(via)
                acked += 1
                back = time.monotonic()
                break
            except Exception:
                time.sleep(0.01)
        gaps.append(back - last_ok)
        print(json.dumps({"round": r + 1, "killed": own, "gap_ms": round((back - last_ok) * 1000),
                          "after_kill_ms": round((back - killed) * 1000)}), flush=True)
        start(own, port)
    value = increment(nodes["a"][0])
    acked += 1
    sent += 1
    gaps.sort()
    p = lambda q: gaps[min(len(gaps) - 1, int(q * len(gaps)))]
    print(json.dumps({"rounds": rounds, "lease_ms": lease_ms, "gap_p50_ms": round(p(0.5) * 1000),
                      "gap_p99_ms": round(p(0.99) * 1000), "gap_max_ms": round(gaps[-1] * 1000),
                      "value": value, "acknowledged": acked, "sent": sent,
                      "ok": acked <= value <= sent}))
finally:
    for _, proc in nodes.values():
        proc.kill()
        proc.wait()
    subprocess.call([os.path.join(here, "postgres.sh"), "stop", pg])
    shutil.rmtree(root, ignore_errors=True)
