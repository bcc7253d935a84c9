#!/usr/bin/env python3
"""Control-plane benchmark (issues 3 and 4): install time on 1 node vs 10 nodes in parallel,
dashboard page latency under load (wrk on loopback), and scale-out time (API call until 1
or 5 new nodes hold a 10,000-file tree).

It runs `filesync demo --nodes 10` (embedded PostgreSQL, `filesync serve`, ten real sshd
nodes on 127.0.0.11-20), drives it through the JSON API like automation would, and prints a
table plus a JSON file. Usage: bench/control.py [--reps N] [--out DIR] (via scripts/bench-control).
"""

import argparse
import http.cookiejar
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "filesync")


class Api:
    def __init__(self, url, token):
        self.url, self.token = url, token

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
        return json.loads(raw) if raw else None

    def wait_jobs(self, env, timeout=600):
        deadline = time.monotonic() + timeout
        while True:
            v = self.call("GET", f"/api/v1/environments/{env}")
            jobs = v["jobs"]
            if jobs and all(j["state"] in ("succeeded", "failed") for j in jobs):
                failed = [j for j in jobs if j["state"] == "failed"]
                if failed:
                    sys.exit(f"bench: install failed: {[(j['node_name'], j['error']) for j in failed]}")
                return jobs
            if time.monotonic() > deadline:
                sys.exit(f"bench: jobs still running after {timeout} s")
            time.sleep(0.05)


def timed_install(api, env, path="ROOT"):
    t = time.monotonic()
    api.call("POST", f"/api/v1/environments/{env}/install", {"path": path, "delay": "1"})
    time.sleep(0.05)
    api.wait_jobs(env)
    elapsed = time.monotonic() - t
    api.call("POST", f"/api/v1/environments/{env}/uninstall", {})
    api.wait_jobs(env)
    return elapsed


def session_cookie(url, password):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(url + "/login").read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrf": csrf, "username": "admin", "password": password}).encode()
    opener.open(url + "/login", data=form)
    return "; ".join(f"{c.name}={c.value}" for c in jar)


def wrk(url, header, seconds, connections):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", header, url],
        capture_output=True, text=True, check=True,
    ).stdout
    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": ms("50%"), "p90_ms": ms("90%"), "p99_ms": ms("99%"), "rps": rps, "errors": int(non2xx.group(1)) if non2xx else 0}


def count_files(root):
    return sum(len(files) for _, _, files in os.walk(root))


def scale_out(api, nodes, files):
    env = api.call("POST", "/api/v1/environments", {"name": "scale"})["result"]
    def node(n, i):
        return {"name": f"s{i}", "address": n["address"], "ssh_port": "2222", "webroot": n["webroot"], "install_prefix": n["webroot"].rsplit("/", 1)[0] + "/opt-scale"}
    for n in nodes[:8]:
        os.makedirs(os.path.join(n["webroot"], "SCALE"), exist_ok=True)
    src = os.path.join(nodes[0]["webroot"], "SCALE")
    for i in range(files):
        d = os.path.join(src, f"d{i % 100:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
            f.write(os.urandom(1024 + (i * 37) % 3072))
    api.call("POST", f"/api/v1/environments/{env}/nodes", {"nodes": [node(nodes[0], 1), node(nodes[1], 2)]})
    api.call("POST", f"/api/v1/environments/{env}/install", {"path": "SCALE", "delay": "1"})
    api.wait_jobs(env)
    wait_until(lambda: count_files(os.path.join(nodes[1]["webroot"], "SCALE")) >= files, 600)
    out = {}
    for label, new in (("1 new node", [2]), ("5 new nodes", [3, 4, 5, 6, 7])):
        t = time.monotonic()
        api.call("POST", f"/api/v1/environments/{env}/nodes", {"nodes": [node(nodes[i], i + 1) for i in new]})
        done = {}
        deadline = time.monotonic() + 900
        while len(done) < len(new):
            for i in new:
                if i not in done and count_files(os.path.join(nodes[i]["webroot"], "SCALE")) >= files:
                    done[i] = time.monotonic() - t
            if time.monotonic() > deadline:
                sys.exit(f"bench: scale-out of {label} did not complete")
            time.sleep(0.2)
        out[label] = {"last_s": max(done.values()), "per_node_s": sorted(done.values())}
        api.wait_jobs(env)
    api.call("POST", f"/api/v1/environments/{env}/uninstall", {})
    api.wait_jobs(env)
    return out


def wait_until(check, timeout):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            sys.exit("bench: timed out")
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", time.strftime("%Y-%m-%d") + "-control"))
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--files", type=int, default=10000, help="files in the scale-out tree")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = "/tmp/filesync-bench-control"
    info_file = os.path.join(work + "-info.json")
    if os.path.exists(info_file):
        os.remove(info_file)
    demo = subprocess.Popen(
        [BIN, "demo", "--nodes", "10", "--dir", work, "--listen", "127.0.0.1:18080", "--info-file", info_file],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(args.out, "demo.err"), "w"), start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(info_file):
            if demo.poll() is not None or time.monotonic() > deadline:
                sys.exit("bench: the demo did not start; see demo.err")
            time.sleep(0.1)
        info = json.load(open(info_file))
        url = info["url"]
        req = urllib.request.Request(url + "/api/v1/tokens", data=json.dumps({"username": "admin", "password": info["password"], "name": "bench"}).encode(), headers={"Content-Type": "application/json"})
        token = json.loads(urllib.request.urlopen(req).read())["token"]
        api = Api(url, token)
        ten = info["environment_id"]
        first = info["nodes"][0]
        one = api.call("POST", "/api/v1/environments", {"name": "single"})["result"]
        api.call("POST", f"/api/v1/environments/{one}/nodes", {"name": "solo", "address": first["address"], "ssh_port": "2222", "webroot": first["webroot"], "install_prefix": first["webroot"].rsplit("/", 1)[0] + "/opt-solo"})
        # Warm-up (pins host keys, fills the page cache) before measuring.
        timed_install(api, one)
        t1, t10 = [], []
        for _ in range(args.reps):  # alternated so drift hits both
            t1.append(timed_install(api, one))
            t10.append(timed_install(api, ten))
        # Leave the 10 nodes installed for the page benchmark (heartbeats, digests, jobs).
        api.call("POST", f"/api/v1/environments/{ten}/install", {"path": "ROOT", "delay": "1"})
        api.wait_jobs(ten)
        cookie = session_cookie(url, info["password"])
        pages = {
            "environments list": (url + "/", "Cookie: " + cookie),
            "environment page (10 nodes)": (url + f"/environments/{ten}", "Cookie: " + cookie),
            "progress fragment": (url + f"/environments/{ten}/jobs", "Cookie: " + cookie),
            "API environment JSON": (url + f"/api/v1/environments/{ten}", "Authorization: Bearer " + token),
        }
        load = {}
        for name, (u, h) in pages.items():
            load[name] = {"c4": wrk(u, h, args.wrk_seconds, 4), "c32": wrk(u, h, args.wrk_seconds, 32)}
        # Scale-out (issue 4): 10,000 files on a 2-node installation, then 1 new node, then
        # 5 new nodes at once; time from the API call until each new node holds the tree.
        api.call("POST", f"/api/v1/environments/{ten}/uninstall", {})
        api.wait_jobs(ten)
        scale = scale_out(api, info["nodes"], args.files)
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)

    med1, med10 = statistics.median(t1), statistics.median(t10)
    result = {
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "install_1_node_s": t1, "install_10_nodes_s": t10,
        "median_1_s": med1, "median_10_s": med10, "ratio_10_over_1": med10 / med1,
        "pages": load,
        "scale_out": scale,
    }
    json.dump(result, open(os.path.join(args.out, "control.json"), "w"), indent=2)
    lines = [
        "Install (POST install -> every job succeeded; release build; parallel_installs 8)",
        f"  1 node : median {med1:.2f} s  (min {min(t1):.2f}, max {max(t1):.2f}, n={len(t1)})",
        f"  10 nodes: median {med10:.2f} s  (min {min(t10):.2f}, max {max(t10):.2f}, n={len(t10)})",
        f"  ratio 10 / 1: {med10 / med1:.2f} (goal: well under 10)",
        "",
        f"Dashboard pages under load (wrk -t2, {args.wrk_seconds} s, loopback, logged in)",
        f"  {'page':<30} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}",
    ]
    for name, r in load.items():
        for c, v in r.items():
            lines.append(f"  {name:<30} {c[1:]:>5} {v['rps']:>8.0f} {v['p50_ms']:>8.2f} {v['p90_ms']:>8.2f} {v['p99_ms']:>8.2f} {v['errors']:>8}")
    lines += ["", f"Scale-out: API call -> new node(s) hold the full tree of {args.files} files (1-4 KiB, 100 dirs), 2 nodes before"]
    for label, v in scale.items():
        lines.append(f"  {label:<12}: all done after {v['last_s']:.2f} s (per node: {', '.join(f'{x:.2f}' for x in v['per_node_s'])})")
    text = "\n".join(lines)
    open(os.path.join(args.out, "control.txt"), "w").write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
