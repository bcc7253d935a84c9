#!/usr/bin/env python3
"""Cross-environment benchmark (issue 5): two environments linked over a slow WAN, emulated by
a TCP proxy on loopback that delays every chunk by LATENCY each way (80 ms by default).

Systems, one node per environment (A = 127.0.3.1, B = 127.0.3.2), the proxy on 127.0.3.10:
  filesync      `filesync agent` on A and on B, each with its own CA, linked with [link]
                (A's remote = the proxy, which forwards to B's link port); delay 0
  lsyncd+rsync  the add-on's cross-environment set-up: lsyncd on A (default.rsync, delay 0,
                archive+compress+update, delete='running') pushing to an rsync daemon on B
                with password auth, through the same proxy

Workloads (repetitions alternate systems):
  cross4k     one new 4 KiB file on A until B has identical content (5 ms polling)
  throughput  MIB MiB of mixed files (a few 8 MiB files, many 64 KiB and 4 KiB ones) written
              on A; time until B has every byte; MiB/s = size / time

Standard library only; run as root via scripts/bench-link. Prints a table with medians and the
ratio filesync / lsyncd+rsync, and writes JSON next to it.
"""

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "filesync")
WORK = "/tmp/filesync-bench-link"
A, B, PROXY = "127.0.3.1", "127.0.3.2", "127.0.3.10"
AGENT_PORT, LINK_PORT, RSYNC_PORT, PROXY_PORT = 7755, 7756, 8873, 9756
PROCS = []


class Proxy:
    """Forwards PROXY:PROXY_PORT to a target, releasing each chunk LATENCY after it was read."""

    def __init__(self, latency, port):
        self.latency, self.target, self.port = latency, None, port
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result()

    async def _listen(self):
        self.server = await asyncio.start_server(self._conn, PROXY, self.port, reuse_address=True)

    async def _conn(self, r1, w1):
        if self.target is None:
            w1.close()
            return
        try:
            r2, w2 = await asyncio.open_connection(*self.target)
        except OSError:
            w1.close()
            return
        await asyncio.gather(self._pipe(r1, w2), self._pipe(r2, w1), return_exceptions=True)

    async def _pipe(self, r, w):
        q = asyncio.Queue()

        async def writer():
            while True:
                due, data = await q.get()
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if data is None:
                    w.close()
                    return
                w.write(data)
                await w.drain()

        t = asyncio.ensure_future(writer())
        try:
            while True:
                data = await r.read(256 * 1024)
                q.put_nowait((time.monotonic() + self.latency, data or None))
                if not data:
                    break
        finally:
            await t


def spawn(cmd, log, cwd=None):
    p = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        p.wait()
    PROCS.clear()


def wait_for(what, cond, timeout=120, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def port_open(host, port):
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def tree_bytes(root):
    n, total = 0, 0
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in ("lsyncd", "lsyncd_tmp")]
        for f in files:
            if f.startswith(".filesync.") or f.startswith("."):
                continue
            try:
                total += os.path.getsize(os.path.join(d, f))
                n += 1
            except OSError:
                pass
    return n, total


class Setup:
    def __init__(self, system, proxies):
        self.system, self.proxy, self.back = system, proxies[0], proxies[1]
        self.home = os.path.join(WORK, system.replace("+", "-"))
        shutil.rmtree(self.home, ignore_errors=True)
        self.roots = {}
        for side in "AB":
            r = os.path.join(self.home, side, "webroot", "ROOT")
            os.makedirs(r)
            os.makedirs(os.path.join(self.home, side, "log"))
            self.roots[side] = r

    def start(self):
        if self.system == "filesync":
            for side, ip, other in (("A", A, B), ("B", B, A)):
                h = os.path.join(self.home, side)
                pki = os.path.join(h, "pki")
                subprocess.run([BIN, "ca", "init", "--dir", pki], check=True, capture_output=True)
                subprocess.run([BIN, "ca", "issue", "--dir", pki, "--name", f"node{side}", "--ip", ip], check=True, capture_output=True)
                # Each side names the other through a proxy: B pulls A's changes through the
                # first (the measured direction), A pulls B's through the second.
                remote = f"{PROXY}:{PROXY_PORT + 1}" if side == "A" else f"{PROXY}:{PROXY_PORT}"
                cfg = (f'node_name = "node{side}"\nlisten = "{ip}:{AGENT_PORT}"\nroot = "{self.roots[side]}"\ndelay = 0\n\n'
                       f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/node{side}.pem"\nkey = "{pki}/node{side}.key"\n\n'
                       f'[link]\nlisten = "{ip}:{LINK_PORT}"\nremote = "{remote}"\npassword = "bench shared password"\n')
                with open(os.path.join(h, "agent.toml"), "w") as f:
                    f.write(cfg)
            self.proxy.target = (A, LINK_PORT)
            self.back.target = (B, LINK_PORT)
            for side in "AB":
                h = os.path.join(self.home, side)
                spawn([BIN, "agent", "--config", os.path.join(h, "agent.toml")], os.path.join(h, "log", "agent.out"))
            for side in "AB":
                log = os.path.join(self.home, side, "webroot", "lsyncd", "var", "log", "lsyncd.log")
                wait_for(f"filesync {side} start-up", lambda: os.path.exists(log) and "startup complete" in open(log).read())
            st = os.path.join(self.home, "B", "webroot", "lsyncd", "var", "log", "lsyncd.status")
            wait_for("link connected", lambda: os.path.exists(st) and "carried by this node" in open(st).read() and ": connected" in open(st).read(), timeout=60, interval=0.05)
        else:
            hb = os.path.join(self.home, "B")
            with open(os.path.join(hb, "rsyncd.secrets"), "w") as f:
                f.write("admin:bench shared password\n")
            os.chmod(os.path.join(hb, "rsyncd.secrets"), 0o600)
            os.makedirs(os.path.join(self.roots["B"], "lsyncd_tmp"), exist_ok=True)
            with open(os.path.join(hb, "rsyncd.conf"), "w") as f:
                f.write(f"address = {B}\nport = {RSYNC_PORT}\npid file = {hb}/rsyncd.pid\nuse chroot = no\nuid = root\ngid = root\n\n"
                        f"[syncmodule]\npath = {self.roots['B']}\nread only = no\nauth users = admin\nsecrets file = {hb}/rsyncd.secrets\n")
            spawn(["rsync", "--daemon", "--no-detach", f"--config={hb}/rsyncd.conf"], os.path.join(hb, "log", "rsyncd.out"))
            wait_for("rsync daemon", lambda: port_open(B, RSYNC_PORT))
            self.proxy.target = (B, RSYNC_PORT)
            ha = os.path.join(self.home, "A")
            with open(os.path.join(ha, "rsync.pass"), "w") as f:
                f.write("bench shared password\n")
            os.chmod(os.path.join(ha, "rsync.pass"), 0o600)
            lua = f"""settings {{ logfile = "{ha}/log/lsyncd.log", statusFile = "{ha}/log/lsyncd.status", nodaemon = true, insist = true }}
sync {{ default.rsync, source = "{self.roots['A']}", target = "rsync://admin@{PROXY}:{PROXY_PORT}/syncmodule/", delay = 0,
  delete = 'running', exclude = {{ 'lsyncd/', 'lsyncd_tmp/' }},
  rsync = {{ archive = true, compress = true, update = true, password_file = "{ha}/rsync.pass", temp_dir = "/lsyncd_tmp/" }} }}
"""
            with open(os.path.join(ha, "lsyncd.conf"), "w") as f:
                f.write(lua)
            spawn(["lsyncd", os.path.join(ha, "lsyncd.conf")], os.path.join(ha, "log", "lsyncd.out"))
            log = os.path.join(ha, "log", "lsyncd.log")
            wait_for("lsyncd startup", lambda: os.path.exists(log) and "finished" in open(log).read(), timeout=60, interval=0.05)

    def stop(self):
        stop_all()


def cross4k(s, rep):
    data = os.urandom(4096)
    name = f"cross4k-{rep}-{time.time_ns()}.bin"
    dst = os.path.join(s.roots["B"], name)
    t0 = time.monotonic()
    with open(os.path.join(s.roots["A"], name), "wb") as f:
        f.write(data)

    def arrived():
        try:
            with open(dst, "rb") as f:
                return f.read() == data
        except OSError:
            return False

    wait_for("4 KiB file on B", arrived, timeout=60)
    return time.monotonic() - t0


def throughput(s, rep, mib):
    base = os.path.join(s.roots["A"], f"tp{rep}")
    os.makedirs(base)
    sizes = []
    big = max(1, mib // 2 // 8)            # half the volume in 8 MiB files
    sizes += [8 << 20] * big
    rest = (mib << 20) - sum(sizes)
    mids = int(rest * 0.8) // (64 << 10)    # most of the rest in 64 KiB files
    sizes += [64 << 10] * mids
    smalls = (rest - mids * (64 << 10)) // 4096
    sizes += [4096] * smalls
    want_n0, want_b0 = tree_bytes(s.roots["B"])
    t0 = time.monotonic()
    for i, size in enumerate(sizes):
        d = os.path.join(base, f"d{i % 50}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}.bin"), "wb") as f:
            f.write(os.urandom(size))
    total = sum(sizes)
    wait_for(f"{mib} MiB on B", lambda: tree_bytes(s.roots["B"]) == (want_n0 + len(sizes), want_b0 + total), timeout=1800, interval=0.05)
    dt = time.monotonic() - t0
    return dt, total / dt / (1 << 20), len(sizes)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--mib", type=int, default=500)
    ap.add_argument("--tp-reps", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=80)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", time.strftime("%Y-%m-%d") + "-link"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/link.py: run as root (scripts/bench-link)")
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    proxies = (Proxy(args.latency_ms / 1000, PROXY_PORT), Proxy(args.latency_ms / 1000, PROXY_PORT + 1))
    systems = ["filesync", "lsyncd+rsync"]
    res = {s: {"cross4k_s": [], "throughput_s": [], "throughput_mib_s": []} for s in systems}
    try:
        for rep in range(max(args.reps, args.tp_reps)):
            order = systems if rep % 2 == 0 else systems[::-1]
            for system in order:
                s = Setup(system, proxies)
                s.start()
                try:
                    if rep < args.reps:
                        for k in range(3):
                            res[system]["cross4k_s"].append(cross4k(s, f"{rep}-{k}"))
                    if rep < args.tp_reps:
                        dt, rate, n = throughput(s, rep, args.mib)
                        res[system]["throughput_s"].append(dt)
                        res[system]["throughput_mib_s"].append(rate)
                        res["files"] = n
                    print(f"rep {rep + 1} {system}: cross4k {res[system]['cross4k_s'][-3:] if rep < args.reps else '-'} "
                          f"throughput {res[system]['throughput_mib_s'][-1:] if rep < args.tp_reps else '-'}", flush=True)
                finally:
                    s.stop()
    finally:
        stop_all()
    lines = [f"## Cross-environment link through a proxy adding {args.latency_ms:.0f} ms each way (1 node per environment)", "",
             "| workload | filesync median (min-max) | lsyncd+rsync median (min-max) | filesync / lsyncd+rsync |", "|---|---|---|---|"]
    for key, label, unit in (("cross4k_s", "one 4 KiB file crosses", "s"), ("throughput_s", f"{args.mib} MiB of mixed files cross", "s"),
                             ("throughput_mib_s", "throughput", "MiB/s")):
        f, l = res["filesync"][key], res["lsyncd+rsync"][key]
        fm, lm = statistics.median(f), statistics.median(l)
        lines.append(f"| {label} | {fm:.3f} {unit} ({min(f):.3f}-{max(f):.3f}) | {lm:.3f} {unit} ({min(l):.3f}-{max(l):.3f}) | {fm / lm:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "link.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "link.json"), "w") as f:
        json.dump({"latency_ms": args.latency_ms, "mib": args.mib, "results": res, "machine": platform.uname()._asdict(),
                   "cpus": os.cpu_count()}, f, indent=2)
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
