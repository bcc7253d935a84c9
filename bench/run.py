#!/usr/bin/env python3
"""filesync against the lsyncd + rsync reference (ring and star) and Syncthing, side by side
on this machine, in one run. Standard library only; run as root (see scripts/bench).

Systems (node i, counted from 1, is the folder tree WORK/<run>/n<i>/root and the loopback
address 127.0.1.<i>; everything stays on 127.0.0.0/8):
  filesync     one `filesync agent` per node on 127.0.1.i:7755, full mesh, mutual TLS
  lsyncd-ring  the PaaS add-on's set-up: per node an `rsync --daemon` on 127.0.1.i:7755
               (module `syncmodule`, auth users = admin, secrets file, read only = no,
               use chroot = no, max connections = 128, munge symlinks = no) and an lsyncd with
               default.rsync, delete='running', archive+compress+update, password_file,
               temp_dir, excludes lsyncd/ lsyncd_tmp/ rsyncd-munged/; node i pushes to
               node i+1, the last to the first
  lsyncd-star  the same daemons; only the writer (node 1) runs lsyncd, one sync{} per node
  syncthing    one syncthing per node, listening on tcp://127.0.1.i:(22000+i), full mesh,
               discovery, relays, NAT, usage and crash reporting, browser and upgrades off,
               fsWatcherDelayS = max(1, delay) (1 s at delay 0, as issue 6 asks)
  rsync-a      (initial sync only) one plain `rsync -a` from node 1 to node 2's daemon

Floors (what this disk allows; filesync makes every file durable before it is visible, so
the fair floor of a durable copy is the one with a sync):
  rsync-a-fsync  (initial sync) `rsync -a --fsync` to each receiver's daemon
  cp-sync        (initial sync) `cp -a` of node 1's tree into each receiver, then `sync -f`
                 on it: a local copy with no network and no checksums, made durable
  cp-fsync       (large file) the file copied into each receiver right after it is written,
                 then fsync'ed: the floor for the time a large file takes to be durable
                 on every node

Repetitions alternate systems (rep 1 of every system, then rep 2, ..., with the order
rotated each rep) so machine drift hits all of them.

Bytes on the wire: iptables byte counters in a chain FSBENCH hooked into INPUT on `lo`,
one rule per direction (--dport and --sport) for the sync ports (7755 and 22001-22010).
On loopback every packet passes INPUT once, so the sum is every byte the systems exchanged
in both directions, IP and TCP headers, TLS and protocol overhead included. If iptables is
unusable the harness falls back to the `lo` receive counter of /proc/net/dev (all loopback
traffic) and says so in the results.
"""

import argparse
import atexit
import fcntl
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("FILESYNC_BENCH_BIN") or os.path.join(ROOT, "target", "release", "filesync")
WORK = "/tmp/filesync-bench"
PORT = 7755  # rsync daemon (as on the add-on's nodes) and filesync agent, on each node's IP
ST_PORT0 = 22000  # syncthing listens on 22000 + i
ST_GUI = 8384  # syncthing REST API on each node's IP (not counted on the wire)
ST_KEY = "filesync-bench-api-key"
PASSWORD = "defaultPassword"  # the add-on's password when the install field is left empty
ALL_SYSTEMS = ["filesync", "lsyncd-ring", "lsyncd-star", "syncthing"]
IGNORE_DIRS = {"lsyncd", "lsyncd_tmp", "rsyncd-munged"}

PROCS = []  # every process group we started; killed on exit whatever happens
LOG = None  # the run log in the output folder


def say(msg):
    line = time.strftime("%H:%M:%S ") + msg
    print(line, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


def kill_all():
    for p in PROCS:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    for p in PROCS:
        try:
            p.wait(timeout=5)
        except Exception:
            pass
    PROCS.clear()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _die_with_parent():
    """In the child, before exec: SIGKILL when the harness dies, however it dies (SIGKILL, OOM,
    a CI job killed), so no daemon outlives the run and squats on 127.0.1.x:7755."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def registry_path():
    return os.path.join(WORK, "procs.txt")


def register(p, args):
    """Remembers every process group started (pid and command line), so that the next run can
    stop the leftovers of a run that was killed before it could clean up (see reap_leftovers)."""
    with open(registry_path(), "a") as f:
        f.write(json.dumps({"pid": p.pid, "cmd": args}) + "\n")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [x.decode(errors="replace") for x in f.read().split(b"\0") if x]
    except OSError:
        return None


def reap_leftovers():
    """Called with the run lock held, so no other run owns these: every process group an earlier
    run of this harness started and that is still alive with the same command line is stopped.
    Such leftovers keep 127.0.1.x:7755 bound; a new rsync daemon then fails to bind, and without
    this check the probes would be pushed into the OLD cluster's folders (a 60 s time-out)."""
    try:
        lines = open(registry_path()).read().splitlines()
    except OSError:
        return []
    reaped = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if cmdline(e["pid"]) == e["cmd"]:
            try:
                os.killpg(e["pid"], signal.SIGKILL)
                reaped.append(f"{e['pid']} ({' '.join(e['cmd'])[:100]})")
            except OSError:
                pass
    os.remove(registry_path())
    if reaped:
        time.sleep(0.5)
    return reaped


def spawn(args, log, env=None):
    out = open(log, "ab")
    p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, env=env, preexec_fn=_die_with_parent)
    out.close()
    PROCS.append(p)
    register(p, args)
    return p


def stop_procs(procs):
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except OSError:
            pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        try:
            os.killpg(p.pid, signal.SIGKILL)  # children left in the group (rsync workers)
        except OSError:
            pass
        if p in PROCS:
            PROCS.remove(p)


class Timeout(Exception):
    pass


def wait_for(what, cond, timeout=120.0, interval=0.001, alive=None, diagnose=None):
    """Polls cond() until true. alive (checked every 0.25 s) raises when a sync process died, so a
    dead process fails the repetition at once instead of after the time-out; diagnose() adds
    what the nodes look like to a time-out message."""
    t0 = time.perf_counter()
    next_alive = t0
    while True:
        if cond():
            return time.perf_counter() - t0
        now = time.perf_counter()
        if alive and now >= next_alive:
            alive()
            next_alive = now + 0.25
        if now - t0 > timeout:
            extra = ""
            if diagnose:
                try:
                    extra = "; " + diagnose()
                except Exception as e:
                    extra = f"; (diagnosis failed: {e})"
            raise Timeout(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def ip(i):
    """Node i's address, i counted from 0 (node 1 = 127.0.1.1)."""
    return f"127.0.1.{i + 1}"


def port_open(host, port):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def listeners():
    """(address, port) -> pids holding each listening TCP socket, from `ss -ltnpH`. A socket can
    have several: an rsync daemon's per-connection child inherits the listening socket."""
    out = {}
    r = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) < 4 or ":" not in f[3]:
            continue
        addr, _, port = f[3].rpartition(":")
        pids = []
        for part in line.split("pid=")[1:]:
            try:
                pids.append(int(part.split(",", 1)[0].rstrip(")")))
            except ValueError:
                pass
        if port.isdigit():
            out[(addr.strip("[]"), int(port))] = pids
    return out


def describe_pid(pids):
    if isinstance(pids, int) or pids is None:
        pids = [pids] if pids else []
    descs = []
    for pid in pids:
        cmd = cmdline(pid)
        descs.append(f"pid {pid} ({' '.join(cmd)[:120]})" if cmd else f"pid {pid} (gone)")
    return ", ".join(descs) or "nobody"


def pgid_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def write_file(path, data, mode=0o644):
    with open(path, "w") as f:
        f.write(data)
    os.chmod(path, mode)


# ---------------------------------------------------------------- bytes on the wire


class Wire:
    CHAIN = "FSBENCH"
    PORTS = [str(PORT), f"{ST_PORT0 + 1}:{ST_PORT0 + 10}"]
    NET = "127.0.1.0/24"  # the nodes' addresses: other engineers' agents on 127.x:7755 are not counted

    def __init__(self):
        self.method = "proc-net-dev"
        if shutil.which("iptables"):
            self._teardown()
            cmds = [["-N", self.CHAIN]]
            for p in self.PORTS:
                # RETURN: a packet is counted by the first rule it matches only. Syncthing dials
                # from its own listening port, so its packets match a --dport and a --sport rule.
                # A client's source address is 127.0.0.1 (lo's preferred source), so match the
                # server side: to a node's address and port, or from a node's address and port.
                cmds += [["-A", self.CHAIN, "-i", "lo", "-p", "tcp", "-d", self.NET, "--dport", p, "-j", "RETURN"],
                         ["-A", self.CHAIN, "-i", "lo", "-p", "tcp", "-s", self.NET, "--sport", p, "-j", "RETURN"]]
            cmds.append(["-I", "INPUT", "-i", "lo", "-j", self.CHAIN])
            ok = all(subprocess.run(["iptables", "-w"] + c, capture_output=True).returncode == 0 for c in cmds)
            if ok and self._iptables() is not None:
                self.method = "iptables"
            else:
                self._teardown()
        self.description = {
            "iptables": "iptables byte counters on lo (INPUT), tcp to or from 127.0.1.0/24 ports 7755 and 22001-22010, "
                        "both directions: every byte the sync systems exchanged, IP/TCP headers and TLS/protocol overhead included",
            "proc-net-dev": "growth of the lo receive counter in /proc/net/dev: ALL loopback traffic during the "
                            "operation (iptables unavailable); run on an otherwise idle machine",
        }[self.method]

    def _iptables(self):
        r = subprocess.run(["iptables", "-w", "-L", self.CHAIN, "-v", "-n", "-x"], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        total = 0
        for line in r.stdout.splitlines()[2:]:
            f = line.split()
            if len(f) >= 2 and f[1].isdigit():
                total += int(f[1])
        return total

    def read(self):
        if self.method == "iptables":
            v = self._iptables()
            if v is not None:
                return v
        with open("/proc/net/dev") as f:
            for line in f:
                if line.strip().startswith("lo:"):
                    return int(line.split(":")[1].split()[0])
        return 0

    def _teardown(self):
        subprocess.run(["iptables", "-w", "-D", "INPUT", "-i", "lo", "-j", self.CHAIN], capture_output=True)
        subprocess.run(["iptables", "-w", "-F", self.CHAIN], capture_output=True)
        subprocess.run(["iptables", "-w", "-X", self.CHAIN], capture_output=True)

    def close(self):
        if self.method == "iptables":
            self._teardown()


WIRE = None

# ---------------------------------------------------------------- clusters


class Cluster:
    """n nodes of one system; node i's sync folder is self.roots[i]; node 0 writes."""

    def __init__(self, system, n, delay, name):
        self.system, self.n, self.delay, self.name = system, n, delay, name
        self.dir = os.path.join(WORK, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.homes = [os.path.join(self.dir, f"n{i + 1}") for i in range(n)]
        self.roots = [os.path.join(h, "root") for h in self.homes]
        for h in self.homes:
            for sub in ("root", "etc", "log", "state"):
                os.makedirs(os.path.join(h, sub))
        self.groups = [[] for _ in range(n)]  # per node: the process groups of its sync processes
        self.prepared = False
        self.start_timeout = 300  # seconds until every node reports ready (raised for big trees)

    def prepare(self):
        """Everything before the sync processes start (keys, configs), kept out of timings."""
        self.prepared = True

    def start(self):
        raise NotImplementedError

    def procs(self):
        return [p for g in self.groups for p in g]

    def addresses(self):
        """Every (address, port) this cluster's processes listen on."""
        return [(ip(i), PORT) for i in range(self.n)]

    def check_free(self):
        """Before starting: nothing may listen on the cluster's addresses yet. A leftover (say an
        rsync daemon of an earlier run) would take the connections meant for this cluster: the
        new daemon fails to bind, and the pushes land in the leftover's folder."""
        held = listeners()
        busy = [f"{a}:{p} is held by {describe_pid(held[(a, p)])}" for a, p in self.addresses() if (a, p) in held]
        if busy:
            raise RuntimeError("address in use before start: " + "; ".join(busy))

    def verify_listeners(self):
        """After starting: each address is held by a process this cluster started."""
        mine = {p.pid for p in self.procs()}
        held = listeners()
        for a, p in self.addresses():
            pids = held.get((a, p), [])
            if not any(pid in mine or pgid_of(pid) in mine for pid in pids):
                raise RuntimeError(f"{a}:{p} is not held by this cluster's processes but by {describe_pid(pids)}")

    def check_alive(self):
        """Raises if a sync process of this cluster has exited."""
        for i, g in enumerate(self.groups):
            for p in g:
                if p.poll() is not None:
                    raise RuntimeError(f"node {i + 1}: `{' '.join(p.args)[:80]}` exited with status {p.returncode}; "
                                       f"logs in {self.homes[i]}/log")

    def stop(self):
        stop_procs(self.procs())
        self.groups = [[] for _ in range(self.n)]

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs_hint(self):
        return self.dir


class FilesyncCluster(Cluster):
    def prepare(self):
        pki = os.path.join(self.dir, "pki")
        subprocess.run([BIN, "ca", "init", "--dir", pki], check=True, capture_output=True)
        for i in range(self.n):
            subprocess.run([BIN, "ca", "issue", "--dir", pki, "--name", f"n{i + 1}", "--ip", ip(i)], check=True, capture_output=True)
        self.configs = []
        for i, h in enumerate(self.homes):
            cfg = [f'node_name = "n{i + 1}"', f'listen = "{ip(i)}:{PORT}"', f'root = "{self.roots[i]}"',
                   f'state_dir = "{h}/state"', f'log_dir = "{h}/log"', f"delay = {int(self.delay)}", "",
                   "[tls]", f'ca = "{pki}/ca.pem"', f'cert = "{pki}/n{i + 1}.pem"', f'key = "{pki}/n{i + 1}.key"']
            for j in range(self.n):
                if j != i:
                    cfg += ["", "[[peers]]", f'name = "n{j + 1}"', f'address = "{ip(j)}:{PORT}"']
            path = os.path.join(h, "etc", "agent.toml")
            write_file(path, "\n".join(cfg) + "\n")
            self.configs.append(path)
        self.prepared = True

    def start(self):
        if not self.prepared:
            self.prepare()
        self.check_free()
        for i, h in enumerate(self.homes):
            self.groups[i].append(spawn([BIN, "agent", "--config", self.configs[i]], os.path.join(h, "log", "agent.out")))
        for i, h in enumerate(self.homes):
            log = os.path.join(h, "log", "lsyncd.log")
            p = self.groups[i][0]

            def ready():
                if p.poll() is not None:
                    raise RuntimeError(f"filesync agent n{i + 1} exited with {p.returncode}; see {h}/log/agent.out and lsyncd.log")
                try:
                    with open(log) as f:
                        return "Normal: startup complete" in f.read()
                except OSError:
                    return False

            wait_for(f"filesync n{i + 1} start-up ({log})", ready, timeout=self.start_timeout, interval=0.01)
        self.verify_listeners()


class LsyncdCluster(Cluster):
    """The add-on's set-up; star=True: only node 0 runs lsyncd, pushing to every other node."""

    def __init__(self, system, n, delay, name, star=False, lsyncd=True):
        super().__init__(system, n, delay, name)
        self.star, self.with_lsyncd = star, lsyncd

    def prepare(self):
        for i, h in enumerate(self.homes):
            etc = os.path.join(h, "etc")
            write_file(os.path.join(etc, "rsyncd.secrets"), f"admin:{PASSWORD}\n", 0o600)
            write_file(os.path.join(etc, "rsyncd.pass"), f"{PASSWORD}\n", 0o600)
            write_file(os.path.join(etc, "rsyncd.conf"),
                       f"address = {ip(i)}\nport = {PORT}\npid file = {etc}/rsyncd.pid\nlock file = {etc}/rsyncd.lock\n"
                       f"log file = {h}/log/rsyncd.log\nuse chroot = no\nmax connections = 128\nuid = root\ngid = root\n\n"
                       f"[syncmodule]\npath = {self.roots[i]}\nread only = no\nauth users = admin\n"
                       f"secrets file = {etc}/rsyncd.secrets\nmunge symlinks = no\n")
            # As on the add-on's nodes, rsync's temp dir lives inside the module and is excluded.
            os.makedirs(os.path.join(self.roots[i], "lsyncd_tmp"), exist_ok=True)
        self.pushers = [0] if self.star else list(range(self.n))
        if not self.with_lsyncd:
            self.pushers = []
        for i in self.pushers:
            h = self.homes[i]
            targets = [j for j in range(self.n) if j != i] if self.star else [(i + 1) % self.n]
            lua = ["settings {", f'  logfile = "{h}/log/lsyncd.log",', f'  statusFile = "{h}/log/lsyncd.status",',
                   "  nodaemon = true,", "  insist = true,", "}"]
            for j in targets:
                lua += ["sync {", "  default.rsync,", f'  source = "{self.roots[i]}",',
                        f'  target = "rsync://admin@{ip(j)}:{PORT}/syncmodule/",', f"  delay = {self.delay},",
                        "  delete = 'running',", "  exclude = { 'lsyncd/', 'lsyncd_tmp/', 'rsyncd-munged/' },",
                        "  rsync = {", "    archive = true,", "    compress = true,", "    update = true,",
                        f'    password_file = "{h}/etc/rsyncd.pass",', '    temp_dir = "/lsyncd_tmp/",', "  },", "}"]
            write_file(os.path.join(h, "etc", "lsyncd.conf"), "\n".join(lua) + "\n")
        self.prepared = True

    def start(self):
        if not self.prepared:
            self.prepare()
        self.start_daemons()
        self.start_lsyncd()

    def start_daemons(self):
        self.check_free()
        for i, h in enumerate(self.homes):
            self.groups[i].append(spawn(["rsync", "--daemon", "--no-detach", f"--config={h}/etc/rsyncd.conf"],
                                        os.path.join(h, "log", "rsyncd.out")))
        for i in range(self.n):
            wait_for(f"rsync daemon on {ip(i)}:{PORT}", lambda: port_open(ip(i), PORT), timeout=30, interval=0.02,
                     alive=self.check_alive)
        # A daemon that could not bind exits with status 10 ("bind() failed" in its rsyncd.log) while
        # port_open() succeeds against whoever holds the address: check who does.
        self.verify_listeners()

    def start_lsyncd(self):
        for i in self.pushers:
            h = self.homes[i]
            self.groups[i].append(spawn(["lsyncd", os.path.join(h, "etc", "lsyncd.conf")], os.path.join(h, "log", "lsyncd.out")))
        # lsyncd first runs one full rsync per sync{}; wait until each says it finished.
        for i in self.pushers:
            log = os.path.join(self.homes[i], "log", "lsyncd.log")
            want = self.n - 1 if self.star else 1

            def ready():
                try:
                    with open(log) as f:
                        text = f.read()
                except OSError:
                    return False
                if "Failure on startup" in text or "Error:" in text:
                    raise RuntimeError(f"lsyncd n{i + 1}: " + next(l for l in text.splitlines() if "Error:" in l or "Failure" in l))
                return sum(1 for line in text.splitlines() if "Startup of" in line and "finished" in line) >= want

            wait_for(f"lsyncd n{i + 1} start-up ({log})", ready, timeout=max(900, self.start_timeout), interval=0.02,
                     alive=self.check_alive)


class SyncthingCluster(Cluster):
    def prepare(self):
        keys = os.path.join(WORK, "syncthing-keys")
        self.ids = []
        for i, h in enumerate(self.homes):
            kd = os.path.join(keys, f"n{i + 1}")
            if not os.path.exists(os.path.join(kd, "cert.pem")):
                shutil.rmtree(kd, ignore_errors=True)
                subprocess.run(["syncthing", "generate", f"--home={kd}", "--no-default-folder"], check=True, capture_output=True)
            if not os.path.exists(os.path.join(kd, "id")):
                r = subprocess.run(["syncthing", "serve", "--device-id", f"--home={kd}"], check=True, capture_output=True, text=True)
                write_file(os.path.join(kd, "id"), r.stdout.strip().splitlines()[-1])
            self.ids.append(open(os.path.join(kd, "id")).read().strip())
            for f in ("cert.pem", "key.pem"):
                shutil.copy(os.path.join(kd, f), os.path.join(h, "etc", f))
        # fsWatcherDelayS = max(1, delay): 1 s at delay 0, as issue 6 specifies for Syncthing. reconnectionIntervalS
        # is 1 (default 60): all nodes start at once, and a device that dialled a peer not yet listening
        # would otherwise wait a full interval before the next try; after start-up it changes nothing.
        wd = max(1, int(math.ceil(self.delay)))
        for i, h in enumerate(self.homes):
            devices = "".join(
                f'    <device id="{self.ids[j]}" name="n{j + 1}" compression="metadata" introducer="false">\n'
                f"        <address>tcp://{ip(j)}:{ST_PORT0 + j + 1}</address>\n        <paused>false</paused>\n"
                f"        <autoAcceptFolders>false</autoAcceptFolders>\n    </device>\n"
                for j in range(self.n))
            members = "".join(f'        <device id="{self.ids[j]}"></device>\n' for j in range(self.n))
            xml = f"""<configuration version="36">
    <folder id="bench" label="bench" path="{self.roots[i]}" type="sendreceive" rescanIntervalS="3600" fsWatcherEnabled="true" fsWatcherDelayS="{wd}" ignorePerms="false" autoNormalize="true">
        <filesystemType>basic</filesystemType>
{members}        <minDiskFree unit="%">0</minDiskFree>
        <markerName>.stfolder</markerName>
    </folder>
{devices}    <gui enabled="true" tls="false" debugging="false">
        <address>{ip(i)}:{ST_GUI}</address>
        <apikey>{ST_KEY}</apikey>
    </gui>
    <options>
        <listenAddress>tcp://{ip(i)}:{ST_PORT0 + i + 1}</listenAddress>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <localAnnounceEnabled>false</localAnnounceEnabled>
        <relaysEnabled>false</relaysEnabled>
        <natEnabled>false</natEnabled>
        <startBrowser>false</startBrowser>
        <urAccepted>-1</urAccepted>
        <urSeen>3</urSeen>
        <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
        <crashReportingEnabled>false</crashReportingEnabled>
        <setLowPriority>false</setLowPriority>
        <minHomeDiskFree unit="%">0</minHomeDiskFree>
        <reconnectionIntervalS>1</reconnectionIntervalS>
    </options>
</configuration>
"""
            write_file(os.path.join(h, "etc", "config.xml"), xml)
        self.prepared = True

    def addresses(self):
        return [(ip(i), ST_PORT0 + i + 1) for i in range(self.n)] + [(ip(i), ST_GUI) for i in range(self.n)]

    def api(self, i, path):
        req = urllib.request.Request(f"http://{ip(i)}:{ST_GUI}{path}", headers={"X-API-Key": ST_KEY})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def start(self):
        if not self.prepared:
            self.prepare()
        self.check_free()
        env = dict(os.environ, STNOUPGRADE="1", STNORESTART="1", STNODEFAULTFOLDER="1", HOME=self.dir)
        for i, h in enumerate(self.homes):
            self.groups[i].append(spawn(["syncthing", "serve", f"--config={h}/etc", f"--data={h}/state", "--no-browser",
                                         "--no-restart", "--no-upgrade", f"--logfile={h}/log/syncthing.log"],
                                        os.path.join(h, "log", "syncthing.out"), env=env))

        def ready():
            try:
                for i in range(self.n):
                    conns = self.api(i, "/rest/system/connections")["connections"]
                    if sum(1 for c in conns.values() if c.get("connected")) < self.n - 1:
                        return False
                    st = self.api(i, "/rest/db/status?folder=bench")
                    if st.get("state") != "idle" or st.get("needFiles", 1) != 0:
                        return False
                return True
            except Exception:
                return False

        wait_for("syncthing devices connected and folder idle", ready, timeout=self.start_timeout, interval=0.2,
                 alive=self.check_alive)
        self.verify_listeners()


class RsyncOnce(LsyncdCluster):
    """A plain `rsync -a` from node 0 to node 1's daemon: the one-shot baseline."""

    def __init__(self, system, n, delay, name):
        super().__init__(system, n, delay, name, lsyncd=False)

    def start(self):
        if not self.prepared:
            self.prepare()
        self.start_daemons()

    def push(self):
        for j in range(1, self.n):
            subprocess.run(["rsync", "-a", f"--password-file={self.homes[0]}/etc/rsyncd.pass", self.roots[0] + "/",
                            f"rsync://admin@{ip(j)}:{PORT}/syncmodule/"], check=True)


class RsyncFsync(RsyncOnce):
    """`rsync -a --fsync` from node 0 to each receiver's daemon: the durable one-shot copy."""

    def push(self):
        for j in range(1, self.n):
            subprocess.run(["rsync", "-a", "--fsync", f"--password-file={self.homes[0]}/etc/rsyncd.pass", self.roots[0] + "/",
                            f"rsync://admin@{ip(j)}:{PORT}/syncmodule/"], check=True)


class LocalCopy(LsyncdCluster):
    """A floor: no daemons, no network; the workload copies with `cp` and syncs."""

    def __init__(self, system, n, delay, name):
        super().__init__(system, n, delay, name, lsyncd=False)

    def start(self):
        if not self.prepared:
            self.prepare()

    def push(self):
        for j in range(1, self.n):
            subprocess.run(["cp", "-a", self.roots[0] + "/.", self.roots[j] + "/"], check=True)
            subprocess.run(["sync", "-f", self.roots[j]], check=True)

    def copy_file(self, name):
        for j in range(1, self.n):
            src, dst = os.path.join(self.roots[0], name), os.path.join(self.roots[j], name)
            shutil.copyfile(src, dst + ".floor")
            fd = os.open(dst + ".floor", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            os.rename(dst + ".floor", dst)


FLOORS = {"rsync-a-fsync": "initial", "cp-sync": "initial", "cp-fsync": "large"}
NO_FLOORS = False


def make_cluster(system, n, delay, name):
    if system == "filesync":
        return FilesyncCluster(system, n, delay, name)
    if system == "lsyncd-ring":
        return LsyncdCluster(system, n, delay, name, star=False)
    if system == "lsyncd-star":
        return LsyncdCluster(system, n, delay, name, star=True)
    if system == "syncthing":
        return SyncthingCluster(system, n, delay, name)
    if system == "rsync-a":
        return RsyncOnce(system, n, delay, name)
    if system == "rsync-a-fsync":
        return RsyncFsync(system, n, delay, name)
    if system in ("cp-sync", "cp-fsync"):
        return LocalCopy(system, n, delay, name)
    raise ValueError(system)


# ---------------------------------------------------------------- trees and content


def has_content(path, data):
    try:
        if os.stat(path).st_size != len(data):
            return False
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def tree_sig(root):
    """relative path -> size of every regular file, without the systems' own dirs and dotfiles."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in IGNORE_DIRS and not x.startswith(".")]
        for f in files:
            if f.startswith("."):
                continue
            p = os.path.join(d, f)
            try:
                out[os.path.relpath(p, root)] = os.path.getsize(p)
            except OSError:
                pass
    return out


def tree_hash(root):
    h = {}
    for rel in sorted(tree_sig(root)):
        with open(os.path.join(root, rel), "rb") as f:
            h[rel] = hashlib.sha1(f.read()).hexdigest()
    return h


class Converge:
    """Polls the receivers until each has every expected file with the expected size, checking
    only what has not arrived yet (cheap while a big tree trickles in), then compares whole trees."""

    def __init__(self, roots, expect):
        self.expect = expect
        self.pending = [(r, list(expect.items())) for r in roots]
        self.full_ok = False

    def __call__(self):
        for r, items in self.pending:
            while items:
                rel, size = items[-1]
                try:
                    if os.stat(os.path.join(r, rel)).st_size != size:
                        return False
                except OSError:
                    return False
                items.pop()
        return all(tree_sig(r) == self.expect for r, _ in self.pending)


def check_identical(c, expect_root=None):
    """After the timing: every node's tree has the writer's content. Returns a problem or None."""
    want = tree_hash(expect_root or c.roots[0])
    for i, r in enumerate(c.roots[1:], 2):
        got = tree_hash(r)
        if got != want:
            diff = sorted(set(k for k in set(got) | set(want) if got.get(k) != want.get(k)))
            return f"node {i} differs from node 1 in {len(diff)} files, e.g. {diff[:3]}"
    return None


def make_tree(root, count, dirs, lo, hi, seed):
    rnd = random.Random(seed)
    for k in range(count):
        d = os.path.join(root, f"dir{k % dirs:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file{k:06d}.bin"), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(lo, hi)))


def template(name, count, dirs, lo, hi, seed):
    """A tree generated once per run and copied (cp -a, same mtimes) into nodes."""
    path = os.path.join(WORK, "templates", f"{name}-{count}-{dirs}-{lo}-{hi}-{seed}")
    if not os.path.exists(os.path.join(path, ".done")):
        shutil.rmtree(path, ignore_errors=True)
        make_tree(path, count, dirs, lo, hi, seed)
        open(os.path.join(path, ".done"), "w").close()
    return path


def copy_tree(src, dst):
    subprocess.run(["cp", "-a", "--", src + "/.", dst], check=True)
    try:
        os.remove(os.path.join(dst, ".done"))
    except OSError:
        pass


def settle(c, extra=0.0):
    """Let follow-on traffic of the previous step die down (the ring's last hop back to node 1)."""
    time.sleep(max(0.5, c.delay + 0.5) + extra)


def settle_start(c):
    """After start-up: every system reports ready only once its start-up work is done (lsyncd's
    start-up rsyncs finished, filesync's `startup complete`, Syncthing idle and connected), and the
    trees are empty, so no change is pending; 1.5 s (or delay + 1 s if shorter) lets stray
    start-up traffic pass. Checked: lsyncd logs no rsync after its start-up ones."""
    time.sleep(min(1.5, c.delay + 1.0))


def diagnose_file(c, name, data):
    """For a time-out message: which nodes have the file, with what content, and who is alive."""
    out = []
    for i, r in enumerate(c.roots):
        p = os.path.join(r, name)
        if not os.path.exists(p):
            out.append(f"n{i + 1}: missing")
        else:
            out.append(f"n{i + 1}: {'ok' if has_content(p, data) else 'size %d, content differs' % os.path.getsize(p)}")
    dead = [f"n{i + 1} `{p.args[0]}` exited {p.returncode}" for i, g in enumerate(c.groups) for p in g if p.poll() is not None]
    return ", ".join(out) + (("; " + ", ".join(dead)) if dead else "; all sync processes alive")


# ---------------------------------------------------------------- workloads (one repetition each)


def w_latency(c, probes):
    """Start c; write `probes` 4 KiB files on node 1 one after the other; time each until all nodes have it."""
    c.start()
    settle_start(c)
    out = []
    timeout = max(60, 8 * c.delay * c.n + 30)
    for k in range(probes):
        data = os.urandom(4096)
        name = f"probe-{k}.bin"
        paths = [os.path.join(r, name) for r in c.roots[1:]]
        t0 = time.perf_counter()
        with open(os.path.join(c.roots[0], name), "wb") as f:
            f.write(data)
        left = list(paths)

        def arrived():
            while left:
                if not has_content(left[-1], data):
                    return False
                left.pop()
            return True

        wait_for(f"probe {k} on all nodes", arrived, timeout=timeout, interval=0.001, alive=c.check_alive,
                 diagnose=lambda: diagnose_file(c, name, data))
        out.append(time.perf_counter() - t0)
        if k + 1 < probes:
            settle(c)
    return out


def w_p99(c, files, gap=0.05):
    c.start()
    settle_start(c)
    lat, sent = [], []
    next_write = next_alive = time.perf_counter()
    k = 0
    while k < files or sent:
        now = time.perf_counter()
        if k < files and now >= next_write:
            data = os.urandom(4096)
            name = f"p-{k}.bin"
            t0 = time.perf_counter()
            with open(os.path.join(c.roots[0], name), "wb") as f:
                f.write(data)
            sent.append([name, data, t0, list(c.roots[1:])])
            next_write += gap
            k += 1
        for item in list(sent):
            left = item[3]
            while left and has_content(os.path.join(left[-1], item[0]), item[1]):
                left.pop()
            if not left:
                lat.append(time.perf_counter() - item[2])
                sent.remove(item)
        if sent and now - sent[0][2] > 120:
            raise Timeout(f"{sent[0][0]} not on all nodes after 120 s; " + diagnose_file(c, sent[0][0], sent[0][1]))
        if now >= next_alive:
            c.check_alive()
            next_alive = now + 0.25
        time.sleep(0.001)
    return lat


def w_burst(c, files):
    c.start()
    settle_start(c)
    t0 = time.perf_counter()
    make_tree(c.roots[0], files, 50, 1024, 8192, 7)
    written = time.perf_counter() - t0
    expect = tree_sig(c.roots[0])
    wait_for("burst on all nodes", Converge(c.roots[1:], expect), timeout=900, interval=0.02, alive=c.check_alive)
    t = time.perf_counter() - t0
    problem = check_identical(c)
    if problem:
        raise RuntimeError(f"after convergence by size: {problem}")
    return {"s": t, "write_s": written}


def w_large(c, data):
    size = len(data)
    c.start()
    settle_start(c)
    path = os.path.join(c.roots[0], "big.bin")
    others = [os.path.join(r, "big.bin") for r in c.roots[1:]]
    want = hashlib.sha256(data).hexdigest()
    b0, t0 = WIRE.read(), time.perf_counter()
    with open(path, "wb") as f:
        for off in range(0, size, 1 << 20):
            f.write(data[off:off + (1 << 20)])
    write_s = time.perf_counter() - t0
    if isinstance(c, LocalCopy):
        c.copy_file("big.bin")
        return {"initial_s": time.perf_counter() - t0, "write_s": write_s}
    conv = Converge(c.roots[1:], {"big.bin": size})
    wait_for("large file on all nodes", conv, timeout=900, interval=0.005, alive=c.check_alive)
    initial_s = time.perf_counter() - t0
    settle(c, 2)
    initial_b = WIRE.read() - b0
    for p in [path] + others:
        got = hashlib.sha256(open(p, "rb").read()).hexdigest()
        if got != want:
            raise RuntimeError(f"after the initial sync {p} has size {os.path.getsize(p)} and differs from what "
                               f"node 1 wrote ({'the WRITER' if p == path else 'a receiver'}'s copy was damaged)")
    patch = os.urandom(4096)
    mid = size // 2
    new = data[:mid] + patch + data[mid + 4096:]
    want = hashlib.sha256(new).hexdigest()
    b0, t0 = WIRE.read(), time.perf_counter()
    with open(path, "r+b") as f:
        f.seek(mid)
        f.write(patch)
    left = list(others)

    def arrived():
        # Every system replaces the file by rename, so seeing the patch means the whole new
        # version is in place (verified by hash below, outside the timing).
        while left:
            try:
                with open(left[-1], "rb") as f:
                    f.seek(mid)
                    if f.read(4096) != patch:
                        return False
            except OSError:
                return False
            left.pop()
        return True

    wait_for("4 KiB edit on all nodes", arrived, timeout=600, interval=0.002, alive=c.check_alive)
    edit_s = time.perf_counter() - t0
    settle(c, 2)
    edit_b = WIRE.read() - b0
    for p in [path] + others:
        if hashlib.sha256(open(p, "rb").read()).hexdigest() != want:
            raise RuntimeError(f"after the edit {p} differs from node 1's file")
    return {"initial_s": initial_s, "write_s": write_s, "initial_bytes": initial_b, "edit_s": edit_s, "edit_bytes": edit_b,
            "edit_bytes_per_target": edit_b / (c.n - 1)}


def w_initial(c, tmpl):
    copy_tree(tmpl, c.roots[0])
    # The tree was there before the system started (as on a real node), not still dirty in
    # the page cache for whichever system syncs the file system first.
    os.sync()
    expect = tree_sig(c.roots[0])
    c.prepare()
    b0, t0 = WIRE.read(), time.perf_counter()
    if isinstance(c, (RsyncOnce, LocalCopy)):
        c.start()
        t0 = time.perf_counter()  # the daemons are up before a one-shot rsync starts
        b0 = WIRE.read()
        c.push()
    else:
        c.start()
    wait_for("initial sync on all nodes", Converge(c.roots[1:], expect), timeout=1800, interval=0.05, alive=c.check_alive)
    t = time.perf_counter() - t0
    b = WIRE.read() - b0
    problem = check_identical(c)
    if problem:
        raise RuntimeError(problem)
    return {"s": t, "bytes": b}


def w_rename(c, files, each):
    c.start()
    settle_start(c)
    src = os.path.join(c.roots[0], "album")
    os.makedirs(src)
    blob = os.urandom(files * each)
    for k in range(files):
        with open(os.path.join(src, f"photo{k:03d}.jpg"), "wb") as f:
            f.write(blob[k * each:(k + 1) * each])
    wait_for("rename set-up on all nodes", Converge(c.roots[1:], tree_sig(c.roots[0])), timeout=900, interval=0.02,
             alive=c.check_alive)
    settle(c, 2)
    b0, t0 = WIRE.read(), time.perf_counter()
    os.rename(src, os.path.join(c.roots[0], "album-2026"))
    expect = tree_sig(c.roots[0])
    wait_for("rename on all nodes", lambda: all(tree_sig(r) == expect for r in c.roots[1:]), timeout=600, interval=0.005,
             alive=c.check_alive)
    t = time.perf_counter() - t0
    settle(c, 2)
    b = WIRE.read() - b0
    problem = check_identical(c)
    if problem:
        raise RuntimeError(problem)
    return {"s": t, "bytes": b, "moved_bytes": files * each}


def group_usage(pgid):
    """CPU seconds (utime+stime+cutime+cstime) and memory (RSS and PSS) of a process group."""
    cpu, rss, pss = 0.0, 0, 0
    tck = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            if int(f[2]) != pgid:
                continue
            cpu += sum(int(x) for x in f[11:15]) / tck
            for line in open(f"/proc/{d}/smaps_rollup"):
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            pass
    return cpu, rss, pss


def node_usage(c):
    out = []
    for g in c.groups:
        tot = [0.0, 0, 0]
        for p in g:
            u = group_usage(p.pid)
            tot = [a + b for a, b in zip(tot, u)]
        out.append(tot)
    return out


def wait_quiet(c, limit):
    """Idle means after the start-up work (initial scans, index exchange): wait until the sync
    processes of all nodes together use under 1% of a CPU for 5 s in a row (at most `limit` s).
    Returns the seconds from the start of c.start() (c.t_start) and whether it got quiet."""
    t0, quiet, prev = time.perf_counter(), 0, sum(u[0] for u in node_usage(c))
    while quiet < 5 and time.perf_counter() - t0 < limit:
        time.sleep(1)
        c.check_alive()
        cur = sum(u[0] for u in node_usage(c))
        quiet = quiet + 1 if cur - prev < 0.01 else 0
        prev = cur
    return time.perf_counter() - c.t_start, quiet >= 5


def w_idle(c, tmpl, seconds):
    for r in c.roots:
        copy_tree(tmpl, r)
    c.t_start = time.perf_counter()
    c.start()
    settle_s, _ = wait_quiet(c, 600)
    before = node_usage(c)
    time.sleep(seconds)
    c.check_alive()
    after = node_usage(c)
    per_node = [{"cpu_s": a[0] - b[0], "rss_bytes": a[1], "pss_bytes": a[2]} for a, b in zip(after, before)]
    nfiles = len(tree_sig(c.roots[0]))
    return {"cpu_s_per_node": statistics.mean(x["cpu_s"] for x in per_node),
            "cpu_s_max_node": max(x["cpu_s"] for x in per_node),
            "rss_bytes_per_node": statistics.mean(x["rss_bytes"] for x in per_node),
            "pss_bytes_per_node": statistics.mean(x["pss_bytes"] for x in per_node),
            "rss_bytes_max_node": max(x["rss_bytes"] for x in per_node),
            "per_node": per_node, "files": nfiles, "seconds": seconds, "settle_s": settle_s}


def w_mem(c, tmpl, files):
    """Memory of the sync processes per node with `files` files present on every node, once the
    start-up work is over (as for idle). No CPU window: this is about the per-file cost."""
    for r in c.roots:
        copy_tree(tmpl, r)
    c.start_timeout = 3600
    c.t_start = time.perf_counter()
    c.start()
    settle_s, quiet = wait_quiet(c, 900)
    time.sleep(2)
    c.check_alive()
    use = node_usage(c)
    return {"rss_bytes_per_node": statistics.mean(u[1] for u in use), "pss_bytes_per_node": statistics.mean(u[2] for u in use),
            "rss_bytes_max_node": max(u[1] for u in use), "per_node": [{"rss_bytes": u[1], "pss_bytes": u[2]} for u in use],
            "files": files, "settle_s": settle_s, "quiet": quiet}


# ---------------------------------------------------------------- reporting


def pct(v, q):
    v = sorted(v)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarize(values):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "p99": pct(v, 0.99), "n": len(v)}


def fmt(x, unit):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if unit == "s":
        if x < 1:
            return f"{x * 1000:.1f} ms"
        return f"{x:.2f} s"
    if unit == "B":
        if x < 1 << 20:
            return f"{x / 1024:.1f} KiB"
        return f"{x / (1 << 20):.1f} MiB"
    if unit == "cpu":
        return f"{x:.3f} s"
    if unit == "B/file":
        return f"{x:.0f} B"
    return f"{x:.3g}"


class Report:
    def __init__(self, out, meta):
        self.out = out
        self.data = dict(meta, workloads={})
        self.md = []
        self.series = []  # (label, samples in seconds) for the chart

    def table(self, key, title, unit, samples, failures, stat="median", notes=()):
        """samples: system -> list of values. Prints median/min/max (or p50/p99/max) and ratios."""
        rows = {s: summarize(v) for s, v in samples.items()}
        self.data["workloads"][key] = {"title": title, "unit": unit, "samples": samples, "summary": rows,
                                       "failures": failures, "notes": list(notes)}
        cols = ["p50", "p99", "max"] if stat == "p99" else ["median", "min", "max"]
        refs = [r for r in ("lsyncd-ring", "lsyncd-star", "syncthing", "rsync-a", *FLOORS) if r in rows]
        lines = [f"\n## {title}\n", f"| system | {' | '.join(cols)} | n | " + " | ".join(f"filesync / {r}" for r in refs) + " |",
                 "|---|" + "---|" * (len(cols) + 1 + len(refs))]
        fs = rows.get("filesync")
        for s, r in rows.items():
            if r is None:
                lines.append(f"| {s} | " + " | ".join("-" for _ in cols) + " | 0 |" + " |" * len(refs))
                continue
            vals = [r["median"] if c in ("median", "p50") else r[c] for c in cols]
            ratios = []
            for ref in refs:
                rr = rows.get(ref)
                if s == "filesync" and fs and rr and rr[stat] > 0:
                    ratios.append(f"{fs[stat] / rr[stat]:.3f}")
                else:
                    ratios.append("")
            lines.append(f"| {s} | " + " | ".join(fmt(v, unit) for v in vals) + f" | {r['n']} | " + " | ".join(ratios) + " |")
        for s, errs in failures.items():
            for e in errs:
                lines.append(f"\n- **{s} failed**: {e}")
        for n in notes:
            lines.append(f"\n- {n}")
        self.emit(lines)

    def summary(self):
        """One line per table: the medians (p99 for the p99 table) and filesync's ratios to them."""
        systems = ["filesync", "lsyncd-ring", "lsyncd-star", "syncthing", "rsync-a", *FLOORS]
        refs = ["lsyncd-ring", "lsyncd-star", "syncthing", "rsync-a", *FLOORS]
        out = ["\n## Summary: medians (p99 for the p99 row); ratio = filesync / reference, below 1 = filesync faster or cheaper\n",
               "| table | " + " | ".join(systems) + " | " + " | ".join(f"/ {r}" for r in refs) + " |",
               "|---|" + "---|" * (len(systems) + len(refs))]
        for key, w in self.data["workloads"].items():
            rows = w.get("summary")
            if not rows:
                continue
            stat = "p99" if key == "p99" else "median"
            unit = w["unit"]
            vals = [fmt(rows[s][stat], unit) if rows.get(s) else "" for s in systems]
            fs = rows.get("filesync")
            ratios = []
            for ref in refs:
                r = rows.get(ref)
                ratios.append(f"{fs[stat] / r[stat]:.3f}" if fs and r and r[stat] > 0 else ("ref. 0" if fs and r else ""))
            fails = sum(len(v) for v in w.get("failures", {}).values())
            out.append(f"| {key}{' (%d failed)' % fails if fails else ''} | " + " | ".join(vals) + " | " + " | ".join(ratios) + " |")
        return out

    def emit(self, lines):
        text = "\n".join(lines)
        print(text, flush=True)
        if LOG:
            LOG.write(text + "\n")
        self.md.append(text)

    def save(self):
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        with open(os.path.join(self.out, "tables.md"), "w") as f:
            m = self.data["machine"]
            f.write(f"# Benchmark {self.data['date']}\n\n"
                    f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem']}, {m['os']}, kernel {m['kernel']}; see machine.txt. "
                    f"Repetitions: {self.data['reps']} per system, alternating. Scratch file system: "
                    f"{'a fresh journaled ext4 image on a loop device' if self.data.get('scratch') == 'image' else 'the folder as it is'}. "
                    f"Bytes on the wire: {self.data['wire']}.\n")
            run = self.data.get("run")
            if run:
                ls = run["load_1min_at_repetition_starts"]
                f.write(f"\nRun time {run['minutes']} min. 1-minute load average when repetitions started: "
                        + (f"median {ls['median']:.2f}, min {ls['min']:.2f}, max {ls['max']:.2f}" if ls else "-")
                        + " (the machine is shared; a load above ~1 means other work competed for the 2 CPUs).\n")
            f.write("\n".join(self.summary()) + "\n")
            f.write("\n".join(self.md) + "\n")
        if self.series:
            svg(self.series, os.path.join(self.out, "latency.svg"))


COLORS = {"filesync": "#1f77b4", "lsyncd-ring": "#d62728", "lsyncd-star": "#ff7f0e", "syncthing": "#2ca02c"}


def svg(series, path):
    """Box plot (p25-p75 box, median bar, whiskers min-max) plus every sample as a dot, log time axis."""
    series = [(label, sorted(v)) for label, v in series if v]
    rowh, top, left, w = 26, 50, 330, 1000
    h = top + rowh * len(series) + 40
    lo = 10 ** math.floor(math.log10(max(1e-4, min(min(v) for _, v in series))))
    hi = 10 ** math.ceil(math.log10(max(max(v) for _, v in series)))

    def x(v):
        v = min(max(v, lo), hi)
        return left + (w - left - 20) * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    p = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         '<text x="10" y="18" font-size="14">Propagation latency until every node has the file (log scale)</text>',
         '<text x="10" y="34" fill="#555">box = 25th-75th percentile, thick bar = median, whiskers = min/max, dots = samples</text>']
    t = lo
    while t <= hi * 1.0001:
        p.append(f'<line x1="{x(t):.1f}" y1="{top - 8}" x2="{x(t):.1f}" y2="{h - 30}" stroke="#ddd"/>'
                 f'<text x="{x(t) - 14:.1f}" y="{h - 14}">{fmt(t, "s")}</text>')
        t *= 10
    for k, (label, v) in enumerate(series):
        y = top + k * rowh
        color = next((c for s, c in COLORS.items() if label.startswith(s + ",") or label.startswith(s + " ")), "#777")
        if k and series[k - 1][0].split(",", 1)[-1] != label.split(",", 1)[-1]:
            p.append(f'<line x1="5" y1="{y - rowh / 2:.1f}" x2="{w - 5}" y2="{y - rowh / 2:.1f}" stroke="#999" stroke-dasharray="3,3"/>')
        p.append(f'<text x="10" y="{y + 4}">{label}</text>')
        q1, med, q3 = pct(v, 0.25), pct(v, 0.5), pct(v, 0.75)
        p.append(f'<line x1="{x(v[0]):.1f}" y1="{y}" x2="{x(v[-1]):.1f}" y2="{y}" stroke="{color}"/>')
        p.append(f'<rect x="{x(q1):.1f}" y="{y - 7}" width="{max(1.0, x(q3) - x(q1)):.1f}" height="14" fill="{color}" fill-opacity="0.25" stroke="{color}"/>')
        p.append(f'<line x1="{x(med):.1f}" y1="{y - 9}" x2="{x(med):.1f}" y2="{y + 9}" stroke="black" stroke-width="2.5"/>')
        for s in v:
            p.append(f'<circle cx="{x(s):.1f}" cy="{y}" r="2" fill="{color}" fill-opacity="0.6"/>')
        p.append(f'<text x="{min(x(v[-1]) + 6, w - 60):.1f}" y="{y + 4}" fill="#333">{fmt(med, "s")}</text>')
    p.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(p) + "\n")


def version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception as e:
        return f"? ({e})"


def machine(wire):
    mem = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split()[1]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    commit = version(["git", "-C", ROOT, "log", "-1", "--format=%h %cd", "--date=iso"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem": f"{int(mem) // 1024} MiB",
        "kernel": platform.release(),
        "os": next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release") if l.startswith("PRETTY_NAME")), "?"),
        "python": platform.python_version(),
        "lsyncd": version(["lsyncd", "--version"]),
        "rsync": version(["rsync", "--version"]),
        "syncthing": version(["syncthing", "--version"]) if shutil.which("syncthing") else "not installed",
        "filesync": (version([BIN, "--version"]) + f" (repo at {commit})") if os.path.exists(BIN) else "not built",
        "bytes on the wire": wire,
    }


# ---------------------------------------------------------------- the run


class Runner:
    def __init__(self, args, report):
        self.a, self.r = args, report
        self.systems = args.systems

    def rep(self, system, workload, rep, n, delay, fn, cls_system=None):
        """One repetition: a fresh cluster, fn(cluster), stop, remove (kept on failure)."""
        # No repetition pays for the write-back of the one before (a system that never syncs
        # leaves its data dirty; the next one to sync the file system would write it).
        os.sync()
        c = make_cluster(cls_system or system, n, delay, f"{workload}-{system}-n{n}-d{delay}-r{rep}")
        try:
            v = fn(c)
            c.stop()
            c.remove()
            return v, None
        except KeyboardInterrupt:
            raise
        except Exception as e:
            c.stop()
            msg = f"{type(e).__name__}: {e} (rep {rep + 1}; logs kept in {c.dir})"
            say(f"  !! {system} {workload}: {msg}")
            if not isinstance(e, (Timeout, RuntimeError)):
                traceback.print_exc()
            return None, msg

    def alternate(self, workload, systems, reps, n, delay, fn):
        """reps repetitions of every system, alternating and rotating the order each rep."""
        samples = {s: [] for s in systems}
        failures = {}
        for rep in range(reps):
            order = systems[rep % len(systems):] + systems[:rep % len(systems)]
            for s in order:
                t0 = time.time()
                load = loadavg()
                v, err = self.rep(s, workload, rep, n, delay, fn)
                if err:
                    failures.setdefault(s, []).append(err)
                else:
                    samples[s].append(v)
                self.r.data.setdefault("load", []).append([workload, n, delay, rep, s, load])
                say(f"  {workload} n={n} d={delay} rep {rep + 1}/{reps} {s}: "
                    f"{short(v) if v is not None else 'FAILED'} ({time.time() - t0:.0f} s, load {load})")
        return samples, failures


def mount_scratch(work, gib=24):
    """Mounts a fresh ext4 (with its journal) on `work` for this run, removed at exit.

    The file system a run would otherwise use may be anything: this machine's root is ext4
    without a journal, where every new inode skips the inodes freed in the last 60-360 s
    (`recently_deleted`), so a repetition that follows another's clean-up spent seconds of
    CPU finding free inodes (perf: `find_inode_bit`, `recently_deleted`), more for whichever
    system created files first. A fresh file system per run, journaled as servers are,
    makes repetitions comparable."""
    img = work.rstrip("/") + ".img"
    subprocess.run(["umount", "-q", work], stderr=subprocess.DEVNULL)
    detach_loops(img)
    if os.path.exists(img):
        os.remove(img)
    with open(img, "wb") as f:
        f.truncate(gib << 30)
    # Inode tables and journal written now, not by a kernel thread during the measurements.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img], check=True)
    dev = subprocess.run(["losetup", "--direct-io=on", "--find", "--show", img], check=True, capture_output=True,
                         text=True).stdout.strip()
    subprocess.run(["mount", dev, work], check=True)

    def unmount():
        subprocess.run(["umount", "-q", work], stderr=subprocess.DEVNULL)
        detach_loops(img)
        try:
            os.remove(img)
        except OSError:
            pass
    atexit.register(unmount)


def detach_loops(img):
    out = subprocess.run(["losetup", "-j", img], capture_output=True, text=True).stdout
    for line in out.splitlines():
        subprocess.run(["losetup", "-d", line.split(":")[0]], stderr=subprocess.DEVNULL)


def loadavg():
    """The 1-minute load average: how busy the (shared) machine was when a repetition started."""
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError):
        return None


def short(v):
    if isinstance(v, list):
        return ", ".join(fmt(x, "s") for x in v[:6]) + (" ..." if len(v) > 6 else "")
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt(x, 'B' if 'bytes' in k else 's')}" for k, x in v.items()
                         if isinstance(x, (int, float)) and k != "files" and k != "seconds")
    return fmt(v, "s")


def main():
    global WIRE, LOG, WORK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer repetitions, smaller sizes")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per system (default 5, --quick 2)")
    ap.add_argument("--only", default="", help="comma-separated workloads: latency,p99,burst,large,initial,rename,idle,scale")
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS), help="comma-separated, default: " + ",".join(ALL_SYSTEMS))
    ap.add_argument("--no-floors", action="store_true", help="leave out the floors (rsync-a-fsync, cp-sync, cp-fsync)")
    ap.add_argument("--slow", action="store_true", help="run delay 10 s even with --quick")
    ap.add_argument("--skip-slow", action="store_true", help="skip delay 10 s (about 20-50 s per ring repetition)")
    ap.add_argument("--idle-seconds", type=int, default=None, help="idle measurement window (default 60, --quick 20)")
    ap.add_argument("--idle-files", type=int, default=None, help="files per node for idle (default 20000, --quick 5000)")
    ap.add_argument("--mem-files", type=int, default=None, help="files per node for the memory per file (default 100000, "
                    "--quick 20000, 0 = skip)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", time.strftime("%Y-%m-%d")))
    ap.add_argument("--wait", action="store_true", help="if another run is in progress, wait for it instead of exiting")
    ap.add_argument("--work", default=WORK, help="scratch folder for the nodes' trees (default %(default)s)")
    ap.add_argument("--scratch", choices=["image", "dir"], default="image",
                    help="image (default): WORK is a fresh ext4 file system with a journal (mkfs defaults, as on a "
                         "Debian server) in a sparse image on a loop device with direct I/O, made for this run; "
                         "dir: WORK is a folder of whatever file system holds it")
    a = ap.parse_args()
    global NO_FLOORS
    NO_FLOORS = a.no_floors
    WORK = a.work
    if os.geteuid() != 0:
        sys.exit("bench/run.py: run as root (rsync daemons as on the PaaS nodes; iptables byte counters)")
    lock_run(a.wait)
    os.makedirs(WORK, exist_ok=True)
    if a.scratch == "image":
        mount_scratch(WORK)
    for r in reap_leftovers():
        print(f"bench/run.py: stopped a leftover of an earlier, killed run: {r}", flush=True)
    held = listeners()
    busy = sorted({f"{a}:{p} held by {describe_pid(pids)}" for (a, p), pids in held.items()
                   if a.startswith("127.0.1.") and p in [PORT, ST_GUI] + list(range(ST_PORT0 + 1, ST_PORT0 + 11))})
    if busy:
        sys.exit("bench/run.py: the nodes' addresses are in use by processes this harness did not start (or started "
                 "without recording them); every repetition would measure them instead. Stop them first:\n  "
                 + "\n  ".join(busy))
    workloads = ["latency", "p99", "burst", "large", "initial", "rename", "idle", "scale"]
    only = [w for w in a.only.split(",") if w] or workloads
    for w in only:
        if w not in workloads:
            sys.exit(f"bench/run.py: unknown workload {w!r}; choose from {','.join(workloads)}")
    systems = []
    for s in [s for s in a.systems.split(",") if s]:
        if s not in ALL_SYSTEMS:
            sys.exit(f"bench/run.py: unknown system {s!r}; choose from {','.join(ALL_SYSTEMS)}")
        if s == "filesync" and not os.path.exists(BIN):
            print(f"bench/run.py: SKIPPING filesync: {BIN} does not exist (build it with cargo build --release)", flush=True)
            continue
        if s == "syncthing" and not shutil.which("syncthing"):
            print("bench/run.py: SKIPPING syncthing: not installed (apt-get install syncthing)", flush=True)
            continue
        if s.startswith("lsyncd") and not (shutil.which("lsyncd") and shutil.which("rsync")):
            print(f"bench/run.py: SKIPPING {s}: lsyncd or rsync not installed", flush=True)
            continue
        systems.append(s)
    if not systems:
        sys.exit("bench/run.py: no system to run")
    a.systems = systems
    q = a.quick
    reps = a.reps or (2 if q else 5)
    slow = (a.slow or not q) and not a.skip_slow

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(WORK, exist_ok=True)
    LOG = open(os.path.join(a.out, "run.log"), "a")
    WIRE = Wire()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "argv": sys.argv[1:], "scratch": a.scratch, "quick": q, "reps": reps, "systems": systems,
            "wire": WIRE.description, "wire_method": WIRE.method}
    meta["machine"] = machine(WIRE.description)
    meta["machine"]["load average at start"] = open("/proc/loadavg").read().strip()
    t_run = time.time()
    with open(os.path.join(a.out, "machine.txt"), "w") as f:
        f.write("".join(f"{k}: {v}\n" for k, v in meta["machine"].items()))
    rep = Report(a.out, meta)
    run = Runner(a, rep)
    say(f"systems {systems}; workloads {only}; reps {reps}; quick={q}; bytes counted with {WIRE.method}")
    try:
        for w in [w for w in workloads if w in only]:
            say(f"== {w}")
            globals()[f"run_{w}"](run, rep, systems, reps, q, slow)
            rep.save()
    except KeyboardInterrupt:
        say("interrupted; stopping every process the harness started")
        raise
    finally:
        kill_all()
        WIRE.close()
        loads = [x[-1] for x in rep.data.get("load", []) if x[-1] is not None]
        rep.data["run"] = {"minutes": round((time.time() - t_run) / 60, 1),
                           "load_at_end": open("/proc/loadavg").read().strip(),
                           "load_1min_at_repetition_starts": summarize(loads)}
        rep.save()
        say(f"results in {a.out} ({rep.data['run']['minutes']} min)")


LOCK = "/tmp/filesync-bench.lock"
_lock_fd = None


def lock_run(wait):
    """One run at a time on a machine: two runs would share the node addresses, ports and the
    iptables chain, and each would measure (and break) the other."""
    global _lock_fd
    _lock_fd = open(LOCK, "a+")
    try:
        fcntl.flock(_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _lock_fd.seek(0)
        other = _lock_fd.read().strip() or "?"
        if not wait:
            print(f"bench/run.py: another benchmark run holds {LOCK} ({other}); it uses the same addresses, ports "
                  f"and byte counters, so this run would disturb it. Wait for it or pass --wait.", file=sys.stderr)
            sys.exit(75)
        print(f"bench/run.py: waiting for the other run to finish ({other})", flush=True)
        fcntl.flock(_lock_fd, fcntl.LOCK_EX)
    _lock_fd.seek(0)
    _lock_fd.truncate()
    _lock_fd.write(f"pid {os.getpid()}: bench/run.py {' '.join(sys.argv[1:])}\n")
    _lock_fd.flush()


def run_latency(run, rep, systems, reps, q, slow):
    configs = [(3, 0), (5, 0), (3, 1), (5, 1)]
    if slow:
        configs += [(3, 10), (5, 10)]
    for n, d in configs:
        # Every probe waits `delay + 0.5 s` before the next: 3 probes at delay 0, 2 at 1 s and
        # 1 at 10 s keep a full run near 40 minutes on 2 cores (the ring needs 4 x D on 5 nodes).
        probes = 3 if d < 1 else 2 if d < 10 else 1
        reps_here = reps
        samples, fails = run.alternate("latency", systems, reps_here, n, d, lambda c: w_latency(c, probes))
        flat = {s: [x for v in vals for x in v] for s, vals in samples.items()}
        notes = [f"{reps_here} clusters started per system, {probes} probe(s) each; n = probes measured"]
        if "syncthing" in systems and d < 1:
            notes.append("syncthing runs with fsWatcherDelayS = 1 s at delay 0 (issue 6's setting for Syncthing)")
        rep.table(f"latency-n{n}-d{d}", f"latency: one new 4 KiB file on node 1 until all {n} nodes have it, delay {d} s",
                  "s", flat, fails, notes=notes)
        for s, v in flat.items():
            rep.series.append((f"{s}, {n} nodes, delay {d} s", v))


def run_p99(run, rep, systems, reps, q, slow):
    files = 100
    rounds = 1
    samples, fails = run.alternate("p99", systems, rounds, 3, 0, lambda c: w_p99(c, files))
    flat = {s: [x for v in vals for x in v] for s, vals in samples.items()}
    rep.table("p99", f"p99: {files} files of 4 KiB written 50 ms apart on node 1, 3 nodes, delay 0 (per-file latency)",
              "s", flat, fails, stat="p99", notes=[f"{rounds} round(s) of {files} files per system, pooled; ratios compare p99"])
    for s, v in flat.items():
        rep.series.append((f"{s}, 3 nodes, 100 files 50 ms apart", v))


def run_burst(run, rep, systems, reps, q, slow):
    files = 500 if q else 2000
    samples, fails = run.alternate("burst", systems, reps, 3, 0, lambda c: w_burst(c, files))
    rep.table("burst", f"burst: {files} files of 1-8 KiB in 50 directories written on node 1, until all 3 nodes are identical (delay 0)",
              "s", {s: [x["s"] for x in v] for s, v in samples.items()}, fails,
              notes=["time counts from the first write; writing the files alone took "
                     + fmt(statistics.median([x["write_s"] for v in samples.values() for x in v] or [0]), "s")])


def run_large(run, rep, systems, reps, q, slow):
    mib = 64 if q else 256
    data = os.urandom(mib << 20)
    samples, fails = run.alternate("large", systems + floors_for("large", systems), reps, 3, 0, lambda c: w_large(c, data))
    title = f"large file: {mib} MiB written on node 1, 3 nodes, delay 0"
    for field, unit, what in [("initial_s", "s", "initial sync time"),
                              ("write_s", "s", "writing the file on node 1 (part of the initial sync time; the same work for every system, "
                                               "slow when the VM hands the page cache fresh memory)"),
                              ("initial_bytes", "B", "initial sync bytes on the wire (all links)"),
                              ("edit_s", "s", "4 KiB overwrite in the middle: time until all nodes have it"),
                              ("edit_bytes_per_target", "B", "4 KiB overwrite: bytes on the wire per receiving node")]:
        rep.table(f"large-{field}", f"{title}: {what}", unit, {s: [x[field] for x in v] for s, v in samples.items() if all(field in x for x in v)},
                  fails if field == "initial_s" else {},
                  notes=["cp-fsync (a floor): the file copied into each receiver as soon as it is written, then fsync'ed"] if field == "initial_s" else ())


def run_initial(run, rep, systems, reps, q, slow):
    files = 2000 if q else 10_000
    tmpl = template("initial", files, 100, 10_000, 30_000, 11)
    mib = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmpl) for f in fs) >> 20
    sys_here = systems + ["rsync-a"] + floors_for("initial", systems)
    samples, fails = {}, {}
    s1, f1 = run.alternate("initial", sys_here, reps, 3, 0, lambda c: w_initial(c, tmpl))
    rep.table("initial", f"initial sync: {files} files ({mib} MiB) on node 1 before start, until all 3 nodes are identical",
              "s", {s: [x["s"] for x in v] for s, v in s1.items()}, f1,
              notes=["time includes each system's start-up (process start to convergence)",
                     "rsync-a: one plain `rsync -a` per receiver from node 1 to that node's rsync daemon, one after the other (daemons already up)",
                     "floors: rsync-a-fsync is the same with --fsync; cp-sync is `cp -a` into each receiver then `sync -f` (no network)"])
    rep.table("initial-bytes", f"initial sync: {files} files ({mib} MiB): bytes on the wire (all links)", "B",
              {s: [x["bytes"] for x in v] for s, v in s1.items()}, {})
    s2, f2 = run.alternate("initial2", ["rsync-a"] + [s for s in systems if s in ("filesync", "lsyncd-star")] + floors_for("initial", systems), reps, 2, 0,
                           lambda c: w_initial(c, tmpl))
    rep.table("initial-2nodes", f"initial sync, 2 nodes: {files} files ({mib} MiB), against a single plain `rsync -a` between two nodes",
              "s", {s: [x["s"] for x in v] for s, v in s2.items()}, f2)


def floors_for(workload, systems):
    """The floors of a workload, unless --systems names only references or --no-floors was given."""
    return [] if NO_FLOORS or "filesync" not in systems else [f for f, w in FLOORS.items() if w == workload]


def run_rename(run, rep, systems, reps, q, slow):
    files, each = (50, 512 << 10) if q else (200, 512 << 10)
    samples, fails = run.alternate("rename", systems, reps, 3, 0, lambda c: w_rename(c, files, each))
    title = f"rename a directory of {files} files, {files * each >> 20} MiB, on node 1, 3 nodes, delay 0"
    rep.table("rename-time", f"{title}: time until all nodes have the new names", "s", {s: [x["s"] for x in v] for s, v in samples.items()}, fails)
    rep.table("rename-bytes", f"{title}: bytes on the wire (all links)", "B", {s: [x["bytes"] for x in v] for s, v in samples.items()}, {},
              notes=[f"moved data: {fmt(files * each, 'B')} per node"])


def run_idle(run, rep, systems, reps, q, slow):
    files = run.a.idle_files or (5000 if q else 20_000)
    secs = run.a.idle_seconds or (20 if q else 60)
    mem_files = run.a.mem_files if run.a.mem_files is not None else (20_000 if q else 100_000)
    tmpl = template("idle", files, max(200, files // 100), 64, 512, 3)

    def once_per_system(kind, label, work):
        """One measurement per system (no repetitions): results and failures by system."""
        got, failed = {}, {}
        for s in systems:
            t0 = time.time()
            v, err = run.rep(s, kind, 0, 3, 10, work)
            say(f"  {label} {s}: {short(v) if v else 'FAILED'} ({time.time() - t0:.0f} s)")
            if err:
                failed[s] = [err]
            else:
                got[s] = v
        return got, failed

    res, fails = once_per_system("idle", "idle", lambda c: w_idle(c, tmpl, secs))
    mem, mem_fails = {}, {}
    if mem_files:
        say(f"  making a tree of {mem_files} files for the memory per file")
        big = template("idle", mem_files, max(200, mem_files // 100), 64, 512, 3)
        mem, mem_fails = once_per_system("mem", f"memory with {mem_files} files,", lambda c: w_mem(c, big, mem_files))
    ratio_cols = [r for r in ("lsyncd-ring", "syncthing") if r in res]
    lines = [f"\n## idle: {files} files present and watched on each of 3 nodes, {secs} s, delay 10 (the add-on's default)\n",
             "| system | CPU s per node (mean) | min node | max node | RSS per node (mean) | min node | max node | PSS per node | "
             + " | ".join(f"filesync / {r} (CPU, RSS)" for r in ratio_cols) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(ratio_cols)]
    fs = res.get("filesync")
    for s, v in res.items():
        cpus = [x["cpu_s"] for x in v["per_node"]]
        rsss = [x["rss_bytes"] for x in v["per_node"]]
        ratios = []
        for r in ratio_cols:
            ref = res[r]
            if s == "filesync" and fs:
                c = f"{fs['cpu_s_per_node'] / ref['cpu_s_per_node']:.2f}" if ref["cpu_s_per_node"] > 0 else "ref. 0"
                ratios.append(f"{c}, {fs['rss_bytes_per_node'] / ref['rss_bytes_per_node']:.2f}")
            else:
                ratios.append("")
        lines.append(f"| {s} | {v['cpu_s_per_node']:.3f} | {min(cpus):.3f} | {max(cpus):.3f} | {fmt(v['rss_bytes_per_node'], 'B')} | "
                     f"{fmt(min(rsss), 'B')} | {fmt(max(rsss), 'B')} | {fmt(v['pss_bytes_per_node'], 'B')} | " + " | ".join(ratios) + " |")
    for s, e in fails.items():
        lines.append(f"\n- **{s} failed**: {e[0]}")
    lines.append("\n- one cluster per system; the spread is over its 3 nodes. CPU counted in clock ticks of 10 ms. Measured after "
                 "the start-up work settled (all nodes' sync processes together under 1% of a CPU for 5 s); time from launch to "
                 "that point: " + ", ".join(f"{s} {v['settle_s']:.0f} s" for s, v in res.items()))
    lines.append("\n- per node = the node's sync processes: filesync agent; rsync daemon + lsyncd (ring; star: lsyncd on node 1 only, "
                 "so its average is over 1 lsyncd and 3 daemons); syncthing. CPU = utime+stime+cutime+cstime from /proc/<pid>/stat "
                 "of every process in those process groups (finished rsync children included); RSS and PSS from "
                 "/proc/<pid>/smaps_rollup at the end of the window.")
    rep.data["workloads"]["idle"] = {"title": f"idle, {files} files, {secs} s", "samples": res, "failures": fails}
    # Rows for the summary table (one value per system, so median = that value).
    rep.data["workloads"]["idle-cpu"] = {"title": f"idle CPU s per node, {files} files, {secs} s", "unit": "cpu",
                                         "summary": {s: {"median": v["cpu_s_per_node"]} for s, v in res.items()},
                                         "failures": fails}
    rep.data["workloads"]["idle-rss"] = {"title": f"idle RSS per node, {files} files", "unit": "B",
                                         "summary": {s: {"median": v["rss_bytes_per_node"]} for s, v in res.items()},
                                         "failures": {}}
    rep.emit(lines)
    if mem_files:
        lines = [f"\n## memory per file: {mem_files} files present on each of 3 nodes, after start-up settled\n",
                 f"| system | RSS per node | PSS per node | RSS / file | extra RSS per extra file ({files} -> {mem_files}) | "
                 "filesync / lsyncd-ring | filesync / syncthing | start-up until quiet |",
                 "|---|---|---|---|---|---|---|---|"]
        per = {}
        for s, v in mem.items():
            per[s] = (v["rss_bytes_per_node"] - res[s]["rss_bytes_per_node"]) / (mem_files - files) if s in res and mem_files > files else None
        for s, v in mem.items():
            ratios = []
            for r in ("lsyncd-ring", "syncthing"):
                ratios.append(f"{per['filesync'] / per[r]:.2f}" if s == "filesync" and per.get("filesync") is not None
                              and per.get(r) and per[r] > 0 else "")
            lines.append(f"| {s} | {fmt(v['rss_bytes_per_node'], 'B')} | {fmt(v['pss_bytes_per_node'], 'B')} | "
                         f"{v['rss_bytes_per_node'] / mem_files:.0f} B | " + (f"{per[s]:.0f} B" if per[s] is not None else "-")
                         + f" | {ratios[0]} | {ratios[1]} | {v['settle_s']:.0f} s{'' if v['quiet'] else ' (never quiet)'} |")
        for s, e in mem_fails.items():
            lines.append(f"\n- **{s} failed**: {e[0]}")
        lines.append(f"\n- extra RSS per extra file = (RSS per node at {mem_files} files - RSS per node at {files} files, from the "
                     f"idle table) / {mem_files - files}: the marginal memory cost of a file; ratios compare that column. "
                     "One cluster per system.")
        rep.data["workloads"]["memory"] = {"title": f"memory, {mem_files} files", "samples": mem, "failures": mem_fails,
                                           "extra_rss_per_extra_file": per}
        rep.data["workloads"]["memory-rss"] = {"title": f"RSS per node, {mem_files} files", "unit": "B",
                                               "summary": {s: {"median": v["rss_bytes_per_node"]} for s, v in mem.items()},
                                               "failures": mem_fails}
        rep.data["workloads"]["memory-per-file"] = {"title": f"extra RSS per extra file, {files} -> {mem_files}", "unit": "B/file",
                                                    "summary": {s: {"median": v} for s, v in per.items() if v is not None},
                                                    "failures": {}}
        rep.emit(lines)


def run_scale(run, rep, systems, reps, q, slow):
    # 20 nodes without Syncthing: its listen ports (22001-22010) and the byte-counting
    # rule cover 10 nodes, and 20 Syncthing processes would not fit in 2 cores' memory
    # bandwidth in any useful way.
    for n in (10, 20):
        sys_n = [s for s in systems if n <= 10 or s != "syncthing"]
        key = "scale" if n == 10 else f"scale-{n}"
        samples, fails = run.alternate(key, sys_n, reps, n, 0, lambda c: w_latency(c, 1))
        flat = {s: [x for v in vals for x in v] for s, vals in samples.items()}
        rep.table(key, f"scale: one new 4 KiB file on node 1 until all {n} nodes have it, delay 0", "s", flat, fails)
        for s, v in flat.items():
            rep.series.append((f"{s}, {n} nodes, delay 0 s", v))


if __name__ == "__main__":
    main()
