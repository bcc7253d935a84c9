#!/usr/bin/env python3
"""filesync vs the lsyncd + rsync reference, side by side on this machine, in one run.

Systems (all nodes on 127.0.2.x loopback addresses, each with its own directory tree):
  filesync     one `filesync agent` per node, full mesh, mutual TLS
  lsyncd-ring  the PaaS add-on's set-up: an rsync daemon per node (password auth, module
               `syncmodule`) and an lsyncd per node with default.rsync, delete='running',
               archive+compress+update, node i pushing to node i+1 (a ring)
  lsyncd-star  the same daemons, but only the writer runs lsyncd, pushing to every node

Two-node workloads (large file, initial sync, rename) compare with lsyncd-star: with two
nodes the ring pushes both ways, and in this harness it shipped a half-written 64 MiB file
and pushed it back over the writer's own file (truncating it), so its times are not a
usable reference there; the star is one lsyncd + rsync pushing one way, i.e. rsync's cost.

Workloads alternate systems rep by rep so machine drift hits both. Bytes on the wire are
the growth of the loopback interface's receive counter (/proc/net/dev, `lo`) during the
operation: all loopback traffic, which on an otherwise idle machine is the sync traffic
(TLS and rsync protocol overhead included). Results: a table per workload (median, min,
max, ratios filesync/reference), results.json and latency.svg in the output folder.
"""

import argparse
import atexit
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "filesync")
WORK = "/tmp/filesync-bench"
RSYNC_PORT = 8730
AGENT_PORT = 7755
PROCS = []


def cleanup():
    for p in PROCS:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except Exception:
            pass
    PROCS.clear()


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def spawn(args, log):
    p = subprocess.Popen(args, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    PROCS.append(p)
    return p


def wait_for(what, cond, timeout=120.0, interval=0.001):
    t0 = time.perf_counter()
    while True:
        if cond():
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def lo_rx():
    with open("/proc/net/dev") as f:
        for line in f:
            if line.strip().startswith("lo:"):
                return int(line.split(":")[1].split()[0])
    return 0


def ip(i):
    return f"127.0.2.{i + 1}"


class Cluster:
    """N nodes of one system; node i's sync folder is self.roots[i]."""

    def __init__(self, system, n, delay, name):
        self.system, self.n, self.delay = system, n, delay
        self.dir = os.path.join(WORK, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.roots = [os.path.join(self.dir, f"node{i + 1}", "webroot", "ROOT") for i in range(n)]
        for r in self.roots:
            os.makedirs(r)
        self.procs = []

    def start(self, writer=0):
        if self.system == "filesync":
            self._start_filesync()
        else:
            self._start_lsyncd(star=self.system == "lsyncd-star", writer=writer)

    def _start_filesync(self):
        pki = os.path.join(self.dir, "pki")
        subprocess.run([BIN, "ca", "init", "--dir", pki], check=True, stdout=subprocess.DEVNULL)
        for i in range(self.n):
            subprocess.run([BIN, "ca", "issue", "--dir", pki, "--name", f"n{i + 1}", "--ip", ip(i)], check=True, stdout=subprocess.DEVNULL)
        for i in range(self.n):
            home = os.path.dirname(os.path.dirname(self.roots[i]))
            cfg = [f'node_name = "n{i + 1}"', f'listen = "{ip(i)}:{AGENT_PORT}"', f'root = "{self.roots[i]}"', f"delay = {self.delay}", "[tls]",
                   f'ca = "{pki}/ca.pem"', f'cert = "{pki}/n{i + 1}.pem"', f'key = "{pki}/n{i + 1}.key"']
            for j in range(self.n):
                if j != i:
                    cfg += ["[[peers]]", f'name = "n{j + 1}"', f'address = "{ip(j)}:{AGENT_PORT}"']
            path = os.path.join(home, "agent.toml")
            open(path, "w").write("\n".join(cfg) + "\n")
            self.procs.append(spawn([BIN, "agent", "--config", path], os.path.join(home, "agent.out")))
        for i in range(self.n):
            log = os.path.join(os.path.dirname(self.roots[i]), "lsyncd", "var", "log", "lsyncd.log")
            wait_for("filesync start-up", lambda: os.path.exists(log) and "startup complete" in open(log).read(), interval=0.02)

    def _start_lsyncd(self, star, writer):
        for i in range(self.n):
            home = os.path.dirname(os.path.dirname(self.roots[i]))
            etc = os.path.join(home, "etc")
            os.makedirs(etc, exist_ok=True)
            secrets = os.path.join(etc, "rsyncd.secrets")
            open(secrets, "w").write("admin:benchpass\n")
            os.chmod(secrets, 0o600)
            pw = os.path.join(etc, "rsyncd.pass")
            open(pw, "w").write("benchpass\n")
            os.chmod(pw, 0o600)
            conf = os.path.join(etc, "rsyncd.conf")
            open(conf, "w").write(
                f"address = {ip(i)}\nport = {RSYNC_PORT}\npid file = {etc}/rsyncd.pid\nuse chroot = no\nmax connections = 128\n"
                f"uid = root\ngid = root\n[syncmodule]\npath = {self.roots[i]}\nread only = no\nauth users = admin\nsecrets file = {secrets}\n")
            # As on the add-on's nodes: rsync's temp dir lives in the module, excluded from sync.
            os.makedirs(os.path.join(self.roots[i], "lsyncd_tmp"), exist_ok=True)
            self.procs.append(spawn(["rsync", "--daemon", "--no-detach", f"--config={conf}"], os.path.join(home, "rsyncd.out")))
        for i in range(self.n):
            wait_for("rsync daemon", lambda: subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/{ip(i)}/{RSYNC_PORT}"], stderr=subprocess.DEVNULL).returncode == 0, interval=0.05)
        for i in range(self.n):
            if star and i != writer:
                continue
            targets = [j for j in range(self.n) if j != i] if star else [(i + 1) % self.n]
            home = os.path.dirname(os.path.dirname(self.roots[i]))
            etc = os.path.join(home, "etc")
            lua = [f'settings {{ logfile = "{home}/lsyncd.log", statusFile = "{home}/lsyncd.status", nodaemon = true, insist = true }}']
            for j in targets:
                lua.append(
                    f'sync {{ default.rsync, source = "{self.roots[i]}/", target = "rsync://admin@{ip(j)}:{RSYNC_PORT}/syncmodule/", '
                    f"delay = {self.delay}, delete = 'running', exclude = {{ 'lsyncd', 'lsyncd_tmp' }}, "
                    f'rsync = {{ archive = true, compress = true, update = true, password_file = "{etc}/rsyncd.pass", temp_dir = "/lsyncd_tmp/" }} }}')
            path = os.path.join(etc, "lsyncd.conf")
            open(path, "w").write("\n".join(lua) + "\n")
            self.procs.append(spawn(["lsyncd", path], os.path.join(home, "lsyncd.out")))
        # lsyncd runs a start-up rsync per target; wait until it reports being idle.
        for i in range(self.n):
            if star and i != writer:
                continue
            home = os.path.dirname(os.path.dirname(self.roots[i]))
            status = os.path.join(home, "lsyncd.status")
            wait_for("lsyncd start-up", lambda: os.path.exists(os.path.join(home, "lsyncd.log")) and "Normal: Startup of" in open(os.path.join(home, "lsyncd.log")).read() and "finished" in open(os.path.join(home, "lsyncd.log")).read(), timeout=600, interval=0.05)

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except Exception:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except Exception:
                os.killpg(p.pid, signal.SIGKILL)
        self.procs = []


def has_content(path, data):
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def tree_sig(root):
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in ("lsyncd", "lsyncd_tmp")]
        for f in files:
            if f.startswith(".filesync.") or f.startswith("."):
                continue
            p = os.path.join(d, f)
            try:
                out[os.path.relpath(p, root)] = os.path.getsize(p)
            except OSError:
                pass
    return out


def all_equal(c, expect):
    return all(tree_sig(r) == expect for r in c.roots[1:])


def make_files(root, count, dirs, lo, hi, seed):
    import random
    rnd = random.Random(seed)
    for k in range(count):
        d = os.path.join(root, f"dir{k % dirs}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file{k}.bin"), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(lo, hi)))


# ---------------------------------------------------------------- workloads


def w_latency(system, n, delay, reps, gap=0.3):
    c = Cluster(system, n, delay, f"lat-{system}-{n}-{delay}")
    c.start()
    out = []
    try:
        time.sleep(max(1.0, delay))
        for k in range(reps):
            data = os.urandom(4096)
            name = f"probe{k}.bin"
            t0 = time.perf_counter()
            with open(os.path.join(c.roots[0], name), "wb") as f:
                f.write(data)
            wait_for("propagation", lambda: all(has_content(os.path.join(r, name), data) for r in c.roots[1:]), timeout=max(120, 6 * delay * n))
            out.append(time.perf_counter() - t0)
            time.sleep(gap + delay)
    finally:
        c.stop()
    return out


def w_p99(system, n, files):
    c = Cluster(system, n, 0, f"p99-{system}")
    c.start()
    lat = []
    try:
        time.sleep(1)
        sent = []
        for k in range(files):
            data = os.urandom(4096)
            name = f"p{k}.bin"
            with open(os.path.join(c.roots[0], name), "wb") as f:
                f.write(data)
            sent.append((name, data, time.perf_counter()))
            deadline = time.perf_counter() + 0.05
            while time.perf_counter() < deadline:
                for item in list(sent):
                    if all(has_content(os.path.join(r, item[0]), item[1]) for r in c.roots[1:]):
                        lat.append(time.perf_counter() - item[2])
                        sent.remove(item)
                time.sleep(0.001)
        for item in sent:
            wait_for("propagation", lambda: all(has_content(os.path.join(r, item[0]), item[1]) for r in c.roots[1:]))
            lat.append(time.perf_counter() - item[2])
    finally:
        c.stop()
    lat.sort()
    return lat


def w_burst(system, n, files):
    c = Cluster(system, n, 0, f"burst-{system}")
    c.start()
    try:
        time.sleep(1)
        t0 = time.perf_counter()
        make_files(c.roots[0], files, 50, 1024, 8192, 7)
        expect = tree_sig(c.roots[0])
        wait_for("burst", lambda: all_equal(c, expect), timeout=600, interval=0.05)
        return time.perf_counter() - t0
    finally:
        c.stop()


def w_large(system, mib):
    c = Cluster(system, 2, 0, f"large-{system}")
    c.start()
    try:
        time.sleep(1)
        path = os.path.join(c.roots[0], "big.bin")
        rx0, t0 = lo_rx(), time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        size = mib << 20
        wait_for("large initial", lambda: os.path.exists(os.path.join(c.roots[1], "big.bin")) and os.path.getsize(os.path.join(c.roots[1], "big.bin")) == size, timeout=600, interval=0.01)
        initial = (time.perf_counter() - t0, lo_rx() - rx0)
        time.sleep(2)
        patch = os.urandom(4096)
        rx0, t0 = lo_rx(), time.perf_counter()
        with open(path, "r+b") as f:
            f.seek(size // 2)
            f.write(patch)
        target = os.path.join(c.roots[1], "big.bin")

        def arrived():
            # Both systems replace the file by rename, so the patched region showing means
            # the whole new version is in place (checked by hash below, outside the timing).
            try:
                with open(target, "rb") as f:
                    f.seek(size // 2)
                    return f.read(4096) == patch
            except OSError:
                return False

        wait_for("large edit", arrived, timeout=600, interval=0.002)
        edit = (time.perf_counter() - t0, lo_rx() - rx0)
        want = hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert hashlib.sha256(open(target, "rb").read()).hexdigest() == want, "edited file differs after sync"
        return {"initial_s": initial[0], "initial_bytes": initial[1], "edit_s": edit[0], "edit_bytes": edit[1]}
    finally:
        c.stop()


def w_initial(system, files, lo, hi):
    c = Cluster(system, 2, 0, f"initial-{system}")
    make_files(c.roots[0], files, 100, lo, hi, 11)
    expect = tree_sig(c.roots[0])
    t0 = time.perf_counter()
    if system == "rsync-a":
        subprocess.run(["rsync", "-a", c.roots[0] + "/", c.roots[1] + "/"], check=True)
    else:
        c.start()
    try:
        wait_for("initial sync", lambda: all_equal(c, expect), timeout=900, interval=0.05)
        return time.perf_counter() - t0
    finally:
        c.stop()


def w_rename(system, files, each_kib):
    c = Cluster(system, 2, 0, f"rename-{system}")
    c.start()
    try:
        src = os.path.join(c.roots[0], "album")
        os.makedirs(src)
        for k in range(files):
            with open(os.path.join(src, f"photo{k}.jpg"), "wb") as f:
                f.write(os.urandom(each_kib * 1024))
        expect = tree_sig(c.roots[0])
        wait_for("rename setup", lambda: all_equal(c, expect), timeout=600, interval=0.05)
        time.sleep(2)
        rx0, t0 = lo_rx(), time.perf_counter()
        os.rename(src, os.path.join(c.roots[0], "album-2026"))
        expect = tree_sig(c.roots[0])
        wait_for("rename", lambda: all_equal(c, expect), timeout=600, interval=0.01)
        return {"s": time.perf_counter() - t0, "bytes": lo_rx() - rx0, "moved_bytes": files * each_kib * 1024}
    finally:
        c.stop()


def cpu_seconds(pid):
    total = 0.0
    pids = [pid] + [int(x) for x in subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()]
    rss = 0
    for p in set(pids):
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total, rss


def w_idle(system, files, seconds):
    c = Cluster(system, 2, 10, f"idle-{system}")
    make_files(c.roots[0], files, 200, 64, 512, 3)
    shutil.copytree(c.roots[0], c.roots[1], dirs_exist_ok=True)
    c.start()
    try:
        time.sleep(5)
        before = [cpu_seconds(p) for p in c.pids()]
        time.sleep(seconds)
        after = [cpu_seconds(p) for p in c.pids()]
        cpu = sum(a[0] - b[0] for a, b in zip(after, before))
        rss = sum(a[1] for a in after)
        return {"cpu_s_per_node": cpu / c.n, "rss_bytes_per_node": rss / c.n, "seconds": seconds, "files": files}
    finally:
        c.stop()


# ---------------------------------------------------------------- reporting


def summarize(values):
    v = sorted(values)
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "n": len(v)}


def fmt(x, unit):
    if unit == "s":
        return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"
    if unit == "B":
        return f"{x / 1024:.1f} KiB" if x < 1 << 20 else f"{x / (1 << 20):.1f} MiB"
    return f"{x:.3f}"


def table(title, rows, unit, ref=("lsyncd-ring", "lsyncd-star")):
    print(f"\n## {title}\n")
    print(f"| system | median | min | max | reps | filesync / system |")
    print("|---|---|---|---|---|---|")
    fs = rows.get("filesync")
    for name, s in rows.items():
        ratio = f"{fs['median'] / s['median']:.3f}" if fs and s["median"] > 0 and name != "filesync" else ""
        print(f"| {name} | {fmt(s['median'], unit)} | {fmt(s['min'], unit)} | {fmt(s['max'], unit)} | {s['n']} | {ratio} |")


def svg(latencies, path):
    """A strip plot of every latency sample (log scale), one row per series."""
    rows = list(latencies.items())
    w, h, left, rowh = 900, 60 + 40 * len(rows), 260, 40
    lo, hi = 1e-3, max(max(v) for _, v in rows) * 1.5
    import math

    def x(v):
        v = max(v, lo)
        return left + (w - left - 20) * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             '<text x="10" y="20" font-size="14">Propagation latency of one 4 KiB file (log scale; dots = samples, bar = median)</text>']
    for t in [0.001, 0.01, 0.1, 1, 10, 100]:
        if t <= hi:
            parts.append(f'<line x1="{x(t):.1f}" y1="30" x2="{x(t):.1f}" y2="{h - 20}" stroke="#ddd"/><text x="{x(t) - 10:.1f}" y="{h - 5}">{fmt(t, "s")}</text>')
    for i, (name, vals) in enumerate(rows):
        y = 50 + i * rowh
        color = "#1f77b4" if name.startswith("filesync") else "#d62728"
        parts.append(f'<text x="10" y="{y + 4}">{name}</text>')
        for v in vals:
            parts.append(f'<circle cx="{x(v):.1f}" cy="{y}" r="3" fill="{color}" fill-opacity="0.5"/>')
        m = statistics.median(vals)
        parts.append(f'<line x1="{x(m):.1f}" y1="{y - 10}" x2="{x(m):.1f}" y2="{y + 10}" stroke="black" stroke-width="2"/>')
    parts.append("</svg>")
    open(path, "w").write("\n".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (a smoke run)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--only", default="", help="comma-separated: latency,p99,burst,large,initial,rename,idle")
    ap.add_argument("--systems", default="filesync,lsyncd-ring,lsyncd-star")
    ap.add_argument("--slow", action="store_true", help="also run delay 10 s (about 40 s per ring repetition on 5 nodes)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", time.strftime("%Y-%m-%d")))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run.py: run as root (the rsync daemons run as root, as on the PaaS nodes)")
    if not os.path.exists(BIN):
        sys.exit(f"bench/run.py: {BIN} missing; run scripts/bench (it builds it)")
    systems = a.systems.split(",")
    only = set(a.only.split(",")) if a.only else {"latency", "p99", "burst", "large", "initial", "rename", "idle"}
    reps = a.reps or (3 if a.quick else 7)
    q = a.quick
    os.makedirs(a.out, exist_ok=True)
    results = {"machine": machine(), "quick": q, "reps": reps, "workloads": {}}
    lat_series = {}

    def run_alternating(key, fn, unit, reps_here):
        samples = {s: [] for s in systems}
        for _ in range(reps_here):
            for s in systems:
                samples[s].append(fn(s))
        rows = {s: summarize(v) for s, v in samples.items()}
        results["workloads"][key] = {"unit": unit, "samples": samples, "summary": rows}
        table(key, rows, unit)
        return samples

    if "latency" in only:
        configs = [(3, 0), (5, 0), (3, 1), (10, 0)] + ([(3, 10), (5, 10)] if a.slow else [])
        for n, d in configs:
            key = f"latency: one 4 KiB file to all of {n} nodes, delay {d} s"
            per = 5 if d < 10 else 2
            samples = run_alternating(key, lambda s: statistics.median(w_latency(s, n, d, per)), "s", max(3, reps // 2) if d == 0 else 3)
            for s, v in samples.items():
                lat_series[f"{s}, {n} nodes, delay {d}"] = v
    if "p99" in only:
        files = 30 if q else 100
        key = f"p99 latency over {files} files written 50 ms apart (3 nodes, delay 0)"
        lat = {s: w_p99(s, 3, files) for s in systems}
        rows = {s: {"median": v[int(len(v) * 0.99) - 1] if len(v) >= 100 else v[-1], "min": v[0], "max": v[-1], "n": len(v)} for s, v in lat.items()}
        results["workloads"][key] = {"unit": "s", "summary": rows}
        table(key + " (median column = p99)", rows, "s")
    if "burst" in only:
        files = 500 if q else 2000
        run_alternating(f"burst: {files} files of 1-8 KiB in 50 directories, 3 nodes, delay 0", lambda s: w_burst(s, 3, files), "s", max(3, reps // 2))
    if "large" in only:
        mib = 64 if q else 256
        key = f"large file: {mib} MiB initial, then a 4 KiB overwrite in the middle (2 nodes)"
        samples = {s: [] for s in systems if s != "lsyncd-ring"}
        for _ in range(2 if q else 3):
            for s in samples:
                samples[s].append(w_large(s, mib))
        results["workloads"][key] = {"samples": samples}
        for field, unit in [("initial_s", "s"), ("edit_s", "s"), ("edit_bytes", "B")]:
            table(f"{key}: {field}", {s: summarize([x[field] for x in v]) for s, v in samples.items()}, unit)
    if "initial" in only:
        files, lo, hi = (2000, 10_000, 30_000) if q else (10_000, 10_000, 30_000)
        sys_here = [s for s in systems if s != "lsyncd-ring"] + ["rsync-a"]
        samples = {s: [] for s in sys_here}
        for _ in range(2 if q else 3):
            for s in sys_here:
                samples[s].append(w_initial(s, files, lo, hi))
        rows = {s: summarize(v) for s, v in samples.items()}
        results["workloads"][f"initial sync: {files} files (~{files * 20 // 1024} MiB) present before start (2 nodes)"] = {"unit": "s", "samples": samples, "summary": rows}
        table(f"initial sync: {files} files (~{files * 20 // 1024} MiB) present before start (2 nodes)", rows, "s")
    if "rename" in only:
        files, kib = (50, 256) if q else (200, 512)
        key = f"rename a directory of {files} files, {files * kib // 1024} MiB (2 nodes)"
        samples = {s: [] for s in systems if s != "lsyncd-ring"}
        for _ in range(2 if q else 3):
            for s in samples:
                samples[s].append(w_rename(s, files, kib))
        results["workloads"][key] = {"samples": samples}
        table(key + ": time", {s: summarize([x["s"] for x in v]) for s, v in samples.items()}, "s")
        table(key + ": bytes on the wire", {s: summarize([x["bytes"] for x in v]) for s, v in samples.items()}, "B")
    if "idle" in only:
        files, secs = (5000, 20) if q else (20_000, 60)
        key = f"idle: {files} files watched, {secs} s"
        samples = {s: w_idle(s, files, secs) for s in systems if s != "lsyncd-star"}  # every ring node runs lsyncd
        results["workloads"][key] = {"samples": samples}
        print(f"\n## {key}\n\n| system | CPU s per node | RSS per node |\n|---|---|---|")
        for s, v in samples.items():
            print(f"| {s} | {v['cpu_s_per_node']:.3f} | {v['rss_bytes_per_node'] / (1 << 20):.1f} MiB |")
    json.dump(results, open(os.path.join(a.out, "results.json"), "w"), indent=1)
    if lat_series:
        svg(lat_series, os.path.join(a.out, "latency.svg"))
    open(os.path.join(a.out, "machine.txt"), "w").write(json.dumps(results["machine"], indent=1) + "\n")
    print(f"\nresults in {a.out}")


def machine():
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            return "?"
    mem = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split()[1]
    return {"cpus": os.cpu_count(), "mem_kib": int(mem), "kernel": platform.release(), "filesync": out([BIN, "--version"]),
            "rsync": out(["rsync", "--version"]), "lsyncd": out(["lsyncd", "--version"]), "date": time.strftime("%Y-%m-%d %H:%M")}


if __name__ == "__main__":
    main()
