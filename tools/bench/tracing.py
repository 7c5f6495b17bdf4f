#!/usr/bin/env python3
"""make bench-tracing: what tracing costs the traced process (issue 7).

Four parts, each measured side by side: every repetition runs every
configuration once, in an order that rotates with the repetition, and the
tables report medians over the repetitions.

  A  probe-hit cost    mapload's miss-heavy `storm` scenario (1 worker thread):
                       detached / `mapscope top --malloc=off` / a bpftrace
                       one-liner counting the same syncmap probes / the same
                       one-liner also reading one gauge per hit.  Cost per
                       op from the target's CPU time (user + system: a
                       probe's int3 trap and BPF program run in the probing
                       thread), so other load on the machine does not count.
  B  service overhead  every mapload scenario (its default 2 threads):
                       detached / `mapscope serve` at its defaults
                       (--malloc=auto) / `mapscope serve --malloc=uprobe` /
                       `mapscope serve --malloc=off`; throughput = mapload's
                       own ops_per_sec (--ops-out).
  C  malloc counting   build/bench/malloc_loop, malloc(64)/free, 1 and 2
                       threads, two loop shapes: `batch` (1000 blocks
                       allocated, then freed: past glibc's tcache, 7 blocks
                       per size, into its bins; 17 ns a pair here, the
                       issue's 18 ns anchor loop, and the goals' loop) and
                       `pair` (one block back and forth through the tcache,
                       5-6 ns: the cheapest malloc there is, where any shim
                       shows most).  Nothing / libmapscope_preload.so with
                       `mapscope serve --malloc=preload` / `mapscope serve
                       --malloc=uprobe` / libbpf-tools `memleak -p`
                       (--memleak PATH or memleak on PATH; Debian 12 has
                       none) / bpftrace counting malloc and free / glibc's
                       libmemusage.so and two floor shims (untraced
                       references).  The pair loop runs only the preloaded
                       configurations.  Slowdown = CPU ns per pair traced /
                       untraced.
  D  agent cost        `mapscope top` and `mapscope serve` (1 s interval,
                       serve scraped every second), both attached to one busy
                       mapload (storm, 8 maps): their own utime+stime per
                       second of wall time, and VmHWM; then strace lists the
                       files each opens while polling.

Every tracer is attached before the work starts: mapload is stopped
(SIGSTOP) during its --start-delay, the tracer started, and mapload resumed
only once the tracer's breakpoints are in the target's text (checked by
reading the probed bytes through /proc/PID/mem); malloc_loop waits for "go".

Writes build/bench/tracing.json (top-level numbers, goals, tables, every
run) and build/bench/tracing.md (the tables as Markdown, for the README).
"""

import argparse
import functools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIOS = ["healthy", "leak", "stale", "bloat", "storm", "churn"]
PROBES = ("map_init", "map_destroy", "miss", "promote", "dirty_rebuild", "delete", "store_new")
HOT_PROBES = ("miss", "delete", "store_new")  # batched: arg2 = events the hit stands for


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------------------
# ELF and /proc: where a probe sits, and whether a tracer has put its int3 there.

def _run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@functools.lru_cache(maxsize=None)
def load_segments(path):
    segs = []
    for line in _run(["readelf", "-lW", path]).splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            segs.append((int(f[2], 16), int(f[1], 16), int(f[4], 16)))  # vaddr, offset, filesz
    return segs


def vaddr_to_off(segs, vaddr):
    for va, off, sz in segs:
        if va <= vaddr < va + sz:
            return vaddr - va + off
    raise ValueError(f"vaddr {vaddr:#x} in no LOAD segment")


@functools.lru_cache(maxsize=None)
def usdt_sites(path):
    """{(provider, name): {"loc": vaddr, "nargs": n}} from the stapsdt notes."""
    sites, cur = {}, {}
    for line in _run(["readelf", "-n", path]).splitlines():
        line = line.strip()
        if line.startswith("Provider:"):
            cur = {"provider": line.split()[1]}
        elif line.startswith("Name:"):
            cur["name"] = line.split()[1]
        elif line.startswith("Location:"):
            cur["loc"] = int(line.split()[1].rstrip(","), 16)
        elif line.startswith("Arguments:") and "name" in cur:
            cur["nargs"] = len(line.split()) - 1
            sites[(cur["provider"], cur["name"])] = dict(cur)
    return sites


@functools.lru_cache(maxsize=None)
def dyn_symbol(path, name):
    for line in _run(["readelf", "-W", "--dyn-syms", path]).splitlines():
        f = line.split()
        if len(f) >= 8 and f[3] == "FUNC" and f[7].split("@")[0] == name and int(f[1], 16):
            return int(f[1], 16)
    raise KeyError(f"{name} not in {path}")


def mapped_path(pid, pred):
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                p = line.split(maxsplit=5)
                if len(p) == 6 and p[5].startswith("/") and pred(p[5].strip()):
                    return p[5].strip()
    except OSError:
        pass
    return None


def libc_of(pid):
    return mapped_path(pid, lambda p: os.path.basename(p) == "libc.so.6"
                       or os.path.basename(p).startswith("libc-"))


class Site:
    """A probed location: `n` bytes at file offset `off` of `path`."""

    def __init__(self, path, vaddr, n):
        self.path = os.path.realpath(path)
        self.off = vaddr_to_off(load_segments(self.path), vaddr)
        self.n = n
        with open(self.path, "rb") as f:
            f.seek(self.off)
            self.orig = f.read(n)

    def installed(self, pid):
        """True when the bytes in the target differ from the file's (an int3)."""
        try:
            st = os.stat(self.path)
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    p = line.split(maxsplit=5)
                    if len(p) < 6:
                        continue
                    lo, hi = (int(x, 16) for x in p[0].split("-"))
                    moff, inode = int(p[2], 16), int(p[4])
                    if inode != st.st_ino or not moff <= self.off < moff + (hi - lo):
                        continue
                    with open(f"/proc/{pid}/mem", "rb") as m:
                        m.seek(lo + self.off - moff)
                        return m.read(self.n) != self.orig
        except OSError:
            pass
        return False


def usdt_site(path, provider, name):
    return Site(path, usdt_sites(path)[(provider, name)]["loc"], 1)


def func_site(path, name):
    return Site(path, dyn_symbol(path, name), 16)


def wait_installed(pid, sites, timeout):
    """Seconds until every site holds a tracer's breakpoint; None on timeout."""
    t0 = time.monotonic()
    while True:
        if all(s.installed(pid) for s in sites):
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            return None
        time.sleep(0.02)


def task_cpu_ns(pid):
    """CPU time of the process's live threads (schedstat: ns)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
    except OSError:
        pass
    return total


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


# ---------------------------------------------------------------------------
# Processes.

class Proc:
    """A child with stderr (and optionally stdout) read line by line."""

    live = []

    def __init__(self, argv, stdout_file=None, env=None, stdin=None, stdout_pipe=False):
        self.argv = argv
        self.stdout_file = stdout_file
        self.lines = []  # (monotonic time, stream, line)
        self.cond = threading.Condition()
        out = subprocess.PIPE if stdout_pipe else (open(stdout_file, "w") if stdout_file else subprocess.DEVNULL)
        self.p = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, stdin=stdin,
                                  env=env, text=True, bufsize=1)
        self.pid = self.p.pid
        self.on_line = None
        self.readers = [threading.Thread(target=self._read, args=(self.p.stderr, "err"), daemon=True)]
        if stdout_pipe:
            self.readers.append(threading.Thread(target=self._read, args=(self.p.stdout, "out"), daemon=True))
        for r in self.readers:
            r.start()
        Proc.live.append(self)
        self.rusage = None

    def _read(self, stream, name):
        for line in stream:
            t = time.monotonic()
            line = line.rstrip("\n")
            if self.on_line:
                self.on_line(t, name, line)
            with self.cond:
                self.lines.append((t, name, line))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern, timeout, stream=None):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, s, line in self.lines:
                    if (stream is None or s == stream) and rx.search(line):
                        return rx.search(line)
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not any(r.is_alive() for r in self.readers)):
                    return None
                self.cond.wait(min(left, 0.1))

    def text(self, stream=None):
        with self.cond:
            return "\n".join(l for _, s, l in self.lines if stream is None or s == stream)

    def wait(self, timeout):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for r in self.readers:
            r.join(2)
        if self in Proc.live:
            Proc.live.remove(self)
        return self.p.returncode

    def wait_rusage(self, timeout):
        """Waits for exit and returns the child's CPU seconds (all threads)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.p.returncode = os.waitstatus_to_exitcode(status)
                self.rusage = ru
                for r in self.readers:
                    r.join(2)
                if self in Proc.live:
                    Proc.live.remove(self)
                return ru.ru_utime + ru.ru_stime
            time.sleep(0.01)
        return None

    def stop(self, sig=signal.SIGINT, timeout=10):
        if self.p.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        if self.wait(timeout) is None:
            self.p.kill()
            self.wait(5)

    @classmethod
    def kill_all(cls):
        for pr in list(cls.live):
            try:
                if pr.p.poll() is None:
                    os.kill(pr.pid, signal.SIGCONT)
                    pr.p.kill()
                pr.p.wait(5)
            except Exception:
                pass


# ---------------------------------------------------------------------------
# Tracers.

class Tracers:
    """The binaries under test, copied to TMP/bin when the run starts: build/
    is shared, and a rebuild in the middle of a run would mix two versions."""

    BINARIES = {"mapscope": "mapscope", "mapload": "mapload", "preload": "libmapscope_preload.so",
                "loop": "bench/malloc_loop", "floor_forward": "bench/libfloor_forward.so",
                "floor_request": "bench/libfloor_request.so"}

    def __init__(self, build, tmp):
        self.tmp = tmp
        bindir = os.path.join(tmp, "bin")
        os.makedirs(bindir, exist_ok=True)
        self.versions = {}
        for attr, rel in self.BINARIES.items():
            src = os.path.join(build, rel)
            dst = os.path.join(bindir, os.path.basename(rel))
            if os.path.exists(src):
                shutil.copy2(src, dst)
                st = os.stat(src)
                self.versions[os.path.basename(rel)] = time.strftime("%Y-%m-%d %H:%M:%S",
                                                                     time.localtime(st.st_mtime))
            setattr(self, attr, os.path.realpath(dst))
        self.seq = 0

    def out(self, tag):
        self.seq += 1
        return os.path.join(self.tmp, f"{self.seq:03d}-{tag}.out")

    # -- syncmap probes ----------------------------------------------------
    def bpftrace_usdt_script(self, binary, gauge=False):
        """Counts what mapscope counts, per map: events of every syncmap probe
        (the hot probes' batch size, arg2, summed) and promote/rebuild
        durations.  stats() keeps count (= probe hits) and total (= events)
        in one map update.  gauge: also read one gauge of the probe's
        snapshot (`live`, at offset 48 of struct syncmap_snapshot) at every
        hit, as mapscope keeps the gauges."""
        sites = usdt_sites(binary)
        lines = []
        for (prov, name), s in sorted(sites.items()):
            if prov != "syncmap":
                continue
            if name in HOT_PROBES and s["nargs"] >= 3:
                body = f"@{name}[arg0] = stats(arg2);"
            elif name in ("promote", "dirty_rebuild"):
                body = f"@{name}[arg0] = stats(arg2);"
            else:
                body = f"@{name}[arg0] = count();"
            if gauge and name != "map_init":  # map_init's snapshot is arg2
                body += " @live[arg0] = *(uint64 *)(arg1 + 48);"
            lines.append(f"usdt:{binary}:syncmap:{name} {{ {body} }}")
        return "\n".join(lines)

    @staticmethod
    def parse_bpftrace(text):
        """{probe: {"hits": n, "events": n}} summed over maps."""
        out = {}
        for m in re.finditer(r"^@(\w+)\[[^\]]*\]: (?:count (\d+), average \S+, total (\d+)|(\d+))\s*$",
                             text, re.M):
            name, cnt, total, plain = m.groups()
            if name not in PROBES:
                continue
            d = out.setdefault(name, {"hits": 0, "events": 0})
            if cnt is not None:
                d["hits"] += int(cnt)
                d["events"] += int(total) if name in HOT_PROBES else int(cnt)
            else:
                d["hits"] += int(plain)
                d["events"] += int(plain)
        return out

    def start(self, kind, pid, binary):
        """Starts tracer `kind` on pid; returns (Proc, sites to wait for, tag)."""
        if kind == "mapscope_top":
            pr = Proc([self.mapscope, "top", "--pid", str(pid), "--interval", "1s", "--malloc=off"],
                      stdout_file=self.out("top"))
            return pr, [usdt_site(binary, "syncmap", "miss")]
        if kind in ("bpftrace", "bpftrace_gauge"):
            script = self.bpftrace_usdt_script(binary, gauge=kind == "bpftrace_gauge")
            pr = Proc(["bpftrace", "-p", str(pid), "-e", script], stdout_pipe=True)
            return pr, [usdt_site(binary, "syncmap", "miss")]
        if kind.startswith("serve"):
            mode = kind.split(":", 1)[1] if ":" in kind else None
            argv = [self.mapscope, "serve", "--pid", str(pid), "--listen", "127.0.0.1:0", "--interval", "1s"]
            if mode:
                argv.append(f"--malloc={mode}")
            pr = Proc(argv, stdout_file=self.out("serve"))
            sites = []
            if binary == self.mapload:
                sites.append(usdt_site(binary, "syncmap", "miss"))
            return pr, sites
        raise ValueError(kind)

    def malloc_tracer(self, kind, pid):
        libc = libc_of(pid)
        malloc_free = [func_site(libc, "malloc"), func_site(libc, "free")]
        if kind == "preload":
            pr = Proc([self.mapscope, "serve", "--pid", str(pid), "--listen", "127.0.0.1:0",
                       "--interval", "1s", "--malloc=preload"], stdout_file=self.out("serve"))
            return pr, [usdt_site(self.preload, "mapscope", "malloc_totals")]
        if kind == "uprobe":
            pr = Proc([self.mapscope, "serve", "--pid", str(pid), "--listen", "127.0.0.1:0",
                       "--interval", "1s", "--malloc=uprobe"], stdout_file=self.out("serve"))
            return pr, malloc_free
        if kind == "memleak":
            pr = Proc([self.memleak, "-p", str(pid)], stdout_file=self.out("memleak"))
            return pr, malloc_free
        if kind == "bpftrace":
            script = (f"uprobe:{libc}:malloc /pid == {pid}/ {{ @malloc = count(); }}\n"
                      f"uprobe:{libc}:free /pid == {pid}/ {{ @free = count(); }}")
            pr = Proc(["bpftrace", "-p", str(pid), "-e", script], stdout_pipe=True)
            return pr, malloc_free
        raise ValueError(kind)


def serve_port(pr, timeout=20):
    m = pr.wait_line(r"serving pid .* on http://([0-9.]+:\d+)/metrics", timeout)
    return m.group(1) if m else None


def scrape(hostport):
    try:
        with urllib.request.urlopen(f"http://{hostport}/metrics", timeout=5) as r:
            return r.read().decode()
    except Exception:
        return ""


def metric(text, name, labels=None):
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if labels and labels not in line:
                continue
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


# ---------------------------------------------------------------------------
# One mapload run with a tracer attached before the maps exist.

def run_mapload(tr, scenario, threads, seconds, tracer, report=False, extra=()):
    ops_file = os.path.join(tr.tmp, f"ops-{tr.seq}.txt")
    stats_file = os.path.join(tr.tmp, f"stats-{tr.seq}.json")
    tr.seq += 1
    argv = [tr.mapload, "--scenario", scenario, "--threads", str(threads), "--seconds", str(seconds),
            "--start-delay", "0.5", "--ops-out", ops_file, "--stats-out", stats_file, *extra]
    if report:
        argv += ["--report-interval", "0.5"]
    first = {}

    def on_line(t, stream, line):
        if not first and line.startswith("mapload: t="):
            m = re.search(r" ops=(\d+) ", line)
            first.update(t=t, ops=int(m.group(1)), cpu_ns=task_cpu_ns(target.pid))

    target = Proc(argv)
    target.on_line = on_line
    run = {"scenario": scenario, "threads": threads, "tracer": tracer or "detached"}
    tpr = None
    try:
        if not target.wait_line(r"^mapload: pid=", 10):
            raise RuntimeError(f"mapload did not start: {target.text()}")
        os.kill(target.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        while proc_state(target.pid) != "T" and time.monotonic() - t0 < 2:
            time.sleep(0.005)
        if tracer:
            tpr, sites = tr.start(tracer, target.pid, tr.mapload)
            ready = wait_installed(target.pid, sites, 30) if sites else 0
            if tracer.startswith("serve") and ready is not None:
                # serve attaches its malloc source with its probes; which one
                # (auto: libc uprobes unless the preload shim is mapped) shows
                # in the target's libc text.
                serve_port(tpr)
                libc = libc_of(target.pid)
                up = [func_site(libc, "malloc"), func_site(libc, "free")] if libc else []
                wait_s = 0 if tracer.endswith(":off") else 3
                run["malloc_source"] = "uprobe" if up and wait_installed(target.pid, up, wait_s) is not None \
                    else "none"
            if ready is None:
                raise RuntimeError(f"{tracer} did not attach: {tpr.text()}")
            run["attach_s"] = round(ready, 3)
            time.sleep(0.2)  # let the last probes land
        os.kill(target.pid, signal.SIGCONT)
        if run.get("malloc_source") == "uprobe":
            # --malloc=auto may give the uprobes up on a busy target: are
            # they still there late in the run?
            time.sleep(0.3 + 0.7 * seconds)
            still = libc_of(target.pid)
            still = still and all(x.installed(target.pid) for x in
                                  (func_site(still, "malloc"), func_site(still, "free")))
            if not still:
                run["malloc_source"] = "uprobe, then detached"
        cpu_s = target.wait_rusage(seconds + 60)
        if cpu_s is None:
            raise RuntimeError("mapload did not finish")
        if target.p.returncode != 0:
            raise RuntimeError(f"mapload exit {target.p.returncode}: {target.text()}")
        with open(ops_file) as f:
            m = re.search(r"ops=(\d+) ops_per_sec=(\d+)", f.read())
        run["ops"], run["ops_per_sec"] = int(m.group(1)), float(m.group(2))
        with open(stats_file) as f:
            st = json.load(f)
        maps = st["maps"]
        run["events"] = {k: sum(mp[k] for mp in maps)
                         for k in ("misses", "promotions", "dirty_rebuilds", "deletes", "store_new")}
        if first:
            run["cpu_ns_per_op"] = (cpu_s * 1e9 - first["cpu_ns"]) / (run["ops"] - first["ops"])
        if tpr:
            if tpr.wait(15) is None:
                tpr.stop()
            run["tracer_rc"] = tpr.p.returncode
            notes = [l for l in tpr.text("err").splitlines()
                     if l.strip() and not re.search(r"serving pid|stopped \(target exit\)|RLIMIT_MEMLOCK|^Attaching", l)]
            if notes:
                run["tracer_stderr"] = notes[:5]
            if tracer.startswith("bpftrace"):
                run["tracer_counts"] = Tracers.parse_bpftrace(tpr.text("out"))
            if tracer == "mapscope_top" and tpr.stdout_file:
                with open(tpr.stdout_file) as f:
                    drops = re.findall(r"drops: (.*)$", f.read(), re.M)
                run["tracer_drops"] = drops[-1].strip() if drops else None
    finally:
        if tpr and tpr.p.poll() is None:
            tpr.stop()
        if target.p.poll() is None and target.rusage is None:
            target.stop(signal.SIGCONT, 0.1)
            target.stop(signal.SIGKILL)
    return run


def attempt(results, what, fn, *args, **kw):
    """One run; a failure is logged and recorded in results["errors"], not fatal."""
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - any failure of one run
        Proc.kill_all()
        log(f"  {what}: FAILED: {e}")
        results.setdefault("errors", []).append(f"{what}: {e}")
        return None


# ---------------------------------------------------------------------------
# A: probe-hit cost.

def part_a(tr, reps, seconds, results):
    configs = ["detached", "mapscope_top", "bpftrace", "bpftrace_gauge"]
    runs = []
    for rep in range(reps):
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]
        for cfg in order:
            r = attempt(results, f"A rep {rep} {cfg}", run_mapload, tr, "storm", 1, seconds,
                        None if cfg == "detached" else cfg, report=True)
            if r is None:
                continue
            r["rep"] = rep
            runs.append(r)
            ev = sum(r["events"].values())
            extra = ""
            if "tracer_counts" in r:
                tc = r["tracer_counts"]
                extra = (f" bpftrace hits={sum(d['hits'] for d in tc.values())}"
                         f" events={sum(d['events'] for k, d in tc.items() if k not in ('map_init', 'map_destroy'))}")
            log(f"  A rep {rep} {cfg:13s} {r['ops_per_sec'] / 1e6:7.2f} Mops/s  "
                f"cpu {r.get('cpu_ns_per_op', 0):6.1f} ns/op  events/op {ev / r['ops']:.3f}{extra}")
    results["runs"]["probe_hit"] = runs

    def med(cfg, f):
        return median([f(r) for r in runs if r["tracer"] == cfg])

    base_cpu = med("detached", lambda r: r.get("cpu_ns_per_op"))
    base_wall = med("detached", lambda r: 1e9 / r["ops_per_sec"])
    # Probe hits per op: bpftrace counts them (stats() count); the library
    # fires the same way whichever tracer listens, so mapscope's hits per
    # event are bpftrace's.
    bt = [r for r in runs if r["tracer"].startswith("bpftrace") and r.get("tracer_counts")]
    hits_per_event = median([
        sum(d["hits"] for k, d in r["tracer_counts"].items() if k not in ("map_init", "map_destroy")) /
        max(1, sum(d["events"] for k, d in r["tracer_counts"].items() if k not in ("map_init", "map_destroy")))
        for r in bt])
    # bpftrace's own counts against the library's counters: the one-liner
    # counts the same thing.
    agree = median([
        sum(d["events"] for k, d in r["tracer_counts"].items() if k not in ("map_init", "map_destroy")) /
        max(1, sum(r["events"].values())) for r in bt])
    rows = []
    for cfg in configs:
        cpu = med(cfg, lambda r: r.get("cpu_ns_per_op"))
        wall = med(cfg, lambda r: 1e9 / r["ops_per_sec"])
        if cfg.startswith("bpftrace"):
            ev = med(cfg, lambda r: sum(d["events"] for k, d in r["tracer_counts"].items()
                                        if k not in ("map_init", "map_destroy")) / r["ops"])
            hits = med(cfg, lambda r: sum(d["hits"] for k, d in r["tracer_counts"].items()
                                          if k not in ("map_init", "map_destroy")) / r["ops"])
        else:
            ev = med(cfg, lambda r: sum(r["events"].values()) / r["ops"])
            hits = ev * hits_per_event if (cfg != "detached" and hits_per_event) else None
        row = {"config": cfg, "mops": med(cfg, lambda r: r["ops_per_sec"]) / 1e6,
               "cpu_ns_per_op": cpu, "wall_ns_per_op": wall, "events_per_op": ev,
               "hits_per_op": hits if cfg != "detached" else 0.0}
        if cfg != "detached" and cpu is not None and base_cpu is not None:
            d = cpu - base_cpu
            row["ns_per_hit"] = d / hits if hits else None
            row["ns_per_event"] = d / ev if ev else None
            row["ns_per_hit_wall"] = (wall - base_wall) / hits if hits else None
        rows.append(row)
    results["probe_hit"] = {"scenario": "storm", "threads": 1, "seconds": seconds, "reps": reps,
                            "hits_per_event": hits_per_event,
                            "bpftrace_events_vs_library": agree, "rows": rows}
    get = {r["config"]: r for r in rows}
    results["probe_hit_ns_mapscope"] = get["mapscope_top"].get("ns_per_hit")
    results["probe_hit_ns_bpftrace"] = get["bpftrace"].get("ns_per_hit")
    results["probe_hit_ns_bpftrace_gauge"] = get["bpftrace_gauge"].get("ns_per_hit")


# ---------------------------------------------------------------------------
# B: service overhead.

# healthy decides a goal, and one 2 s run of it moves by +-15 % on a shared
# VM whatever is attached (detached alone: 231-283 M ops/s in one run of
# this script): more repetitions than the other scenarios.
HEALTHY_EXTRA_REPS = 4


def part_b(tr, reps, seconds, scenarios, results):
    configs = ["detached", "serve", "serve:uprobe", "serve:off"]
    runs = []
    for scen in scenarios:
        for rep in range(reps + HEALTHY_EXTRA_REPS if scen == "healthy" else reps):
            order = configs[rep % len(configs):] + configs[:rep % len(configs)]
            for cfg in order:
                r = attempt(results, f"B {scen} rep {rep} {cfg}", run_mapload, tr, scen, 2, seconds,
                            None if cfg == "detached" else cfg, report=True)
                if r is None:
                    continue
                r["rep"] = rep
                runs.append(r)
                src = f"  malloc: {r['malloc_source']}" if "malloc_source" in r else ""
                log(f"  B {scen:8s} rep {rep} {cfg:13s} {r['ops_per_sec'] / 1e6:8.2f} Mops/s  "
                    f"cpu {r.get('cpu_ns_per_op', 0):7.1f} ns/op{src}")
    results["runs"]["service"] = runs
    rows = []
    for scen in scenarios:
        row = {"scenario": scen}
        sel = lambda cfg: [r for r in runs if r["scenario"] == scen and r["tracer"] == cfg]
        base = median([r["ops_per_sec"] for r in sel("detached")])
        base_cpu = median([r.get("cpu_ns_per_op") for r in sel("detached")])
        row["detached_mops"] = base / 1e6 if base else None
        row["detached_cpu_ns_per_op"] = base_cpu
        for cfg in configs[1:]:
            m = median([r["ops_per_sec"] for r in sel(cfg)])
            c = median([r.get("cpu_ns_per_op") for r in sel(cfg)])
            row[cfg + "_mops"] = m / 1e6 if m else None
            row[cfg + "_ratio"] = m / base if base and m else None
            row[cfg + "_cpu_ratio"] = base_cpu / c if base_cpu and c else None
            srcs = sorted({r.get("malloc_source") for r in sel(cfg)} - {None})
            row[cfg + "_malloc_source"] = " | ".join(srcs)
        rows.append(row)
    results["service"] = {"threads": 2, "seconds": seconds, "reps": reps, "reps_healthy": reps + HEALTHY_EXTRA_REPS, "rows": rows,
                          "note": "ratio = mapload ops_per_sec attached / detached (medians); "
                                  "cpu_ratio = the same from the target's CPU ns per op; "
                                  "serve = mapscope serve at its defaults (--malloc=auto, which picks "
                                  "libc uprobes for a target without libmapscope_preload.so: the "
                                  "malloc_source column says what it picked); serve:off = USDT probes only"}
    h = [r for r in rows if r["scenario"] == "healthy"]
    if h:
        results["healthy_attached_ratio"] = h[0]["serve_ratio"]
        results["healthy_attached_ratio_cpu"] = h[0]["serve_cpu_ratio"]


# ---------------------------------------------------------------------------
# C: malloc counting.

# Reference rows: the cheapest shims there can be (tools/bench/tracing/
# floor_shim.c), preloaded with no tracer.  What libmapscope_preload.so's
# slowdown is to be read against: on a 5 ns loop, being interposed at all
# is a measurable share.
# glibc's own LD_PRELOAD counter (shared atomic counters), an anchor of the
# issue: 5.3x on 1 thread and 20x on 2 on its 18 ns loop.
MEMUSAGE = "/usr/lib/x86_64-linux-gnu/libmemusage.so"
UNTRACED_SHIMS = {"floor:forward": "floor_forward", "floor:request": "floor_request",
                  "memusage": "memusage"}

# The loop shapes (malloc_loop --batch K): the goals are judged on `batch`.
MALLOC_LOOPS = {
    "batch": {"batch": 1000, "configs": ["none", "floor:forward", "floor:request", "memusage", "preload",
                                         "uprobe", "memleak", "bpftrace"]},
    "pair": {"batch": 1, "configs": ["none", "floor:forward", "floor:request", "memusage", "preload"]},
}


def run_loop(tr, threads, seconds, tracer, batch=1):
    env = dict(os.environ)
    if tracer == "preload":
        env["LD_PRELOAD"] = tr.preload
    if tracer in UNTRACED_SHIMS:
        env["LD_PRELOAD"] = getattr(tr, UNTRACED_SHIMS[tracer])
    target = Proc([tr.loop, "--threads", str(threads), "--seconds", str(seconds), "--batch", str(batch)],
                  env=env, stdin=subprocess.PIPE, stdout_pipe=True)
    run = {"threads": threads, "tracer": tracer or "none", "batch": batch}
    tpr = None
    try:
        if not target.wait_line(r"^ready pid=", 10, "out"):
            raise RuntimeError(f"malloc_loop did not start: {target.text()}")
        port = None
        if tracer and tracer not in UNTRACED_SHIMS:
            tpr, sites = tr.malloc_tracer(tracer, target.pid)
            ready = wait_installed(target.pid, sites, 30)
            if tracer in ("preload", "uprobe"):
                port = serve_port(tpr)
            if tracer == "memleak" and not tpr.wait_line(
                    r"attached \d+ probes|Tracing outstanding memory allocs", 30):
                ready = None
            if ready is None:
                raise RuntimeError(f"{tracer} did not attach: {tpr.text()}")
            run["attach_s"] = round(ready, 3)
            time.sleep(0.3)
        target.p.stdin.write("go\n")
        target.p.stdin.flush()
        m = target.wait_line(r"^threads=\d+ pairs=(\d+) wall_ns_per_pair=([\d.]+) cpu_ns_per_pair=([\d.]+)",
                             seconds + 120, "out")
        if not m:
            raise RuntimeError(f"malloc_loop gave no result: {target.text()}")
        run["pairs"], run["wall_ns"], run["cpu_ns"] = int(m.group(1)), float(m.group(2)), float(m.group(3))
        if port:
            time.sleep(1.2)  # one more poll of the kernel tables
            text = scrape(port)
            run["counted_allocs"] = metric(text, "mapscope_malloc_allocs_total")
            run["counted_frees"] = metric(text, "mapscope_malloc_frees_total")
        target.p.stdin.close()
        target.wait(10)
        if tpr:
            if tracer == "bpftrace":
                tpr.stop(signal.SIGINT)
                out = tpr.text("out")
                for k in ("malloc", "free"):
                    mm = re.search(rf"^@{k}: (\d+)", out, re.M)
                    run[f"counted_{k}s"] = int(mm.group(1)) if mm else None
                run["counted_allocs"] = run.pop("counted_mallocs", None)
            else:
                tpr.stop(signal.SIGINT)
    finally:
        if tpr and tpr.p.poll() is None:
            tpr.stop()
        if target.p.poll() is None:
            target.stop(signal.SIGKILL)
    return run


def part_c(tr, reps, seconds, results, skip_memleak_reason=None):
    runs, rows = [], []
    for loop, spec in MALLOC_LOOPS.items():
        configs = [c for c in spec["configs"] if not (c == "memleak" and skip_memleak_reason)]
        configs = [c for c in configs if c not in UNTRACED_SHIMS or os.path.exists(getattr(tr, UNTRACED_SHIMS[c]))]
        for threads in (1, 2):
            for rep in range(reps):
                order = configs[rep % len(configs):] + configs[:rep % len(configs)]
                for cfg in order:
                    r = attempt(results, f"C {loop} {threads}t rep {rep} {cfg}", run_loop, tr, threads, seconds,
                                None if cfg == "none" else cfg, spec["batch"])
                    if r is None:
                        continue
                    r["rep"], r["loop"] = rep, loop
                    runs.append(r)
                    cnt = ""
                    if r.get("counted_allocs") is not None:
                        cnt = f"  counted allocs {r['counted_allocs']:.0f} / pairs {r['pairs']}"
                    log(f"  C {loop:5s} {threads}t rep {rep} {cfg:13s} cpu {r['cpu_ns']:9.1f} ns/pair  "
                        f"wall {r['wall_ns']:9.1f} ns/pair{cnt}")
        for threads in (1, 2):
            mine = [r for r in runs if r["loop"] == loop and r["threads"] == threads]
            base = median([r["cpu_ns"] for r in mine if r["tracer"] == "none"])
            base_w = median([r["wall_ns"] for r in mine if r["tracer"] == "none"])
            for cfg in configs:
                sel = [r for r in mine if r["tracer"] == cfg]
                cpu, wall = median([r["cpu_ns"] for r in sel]), median([r["wall_ns"] for r in sel])
                conf = median([r["counted_allocs"] / r["pairs"] for r in sel if r.get("counted_allocs")])
                rows.append({"loop": loop, "threads": threads, "config": cfg, "cpu_ns_per_pair": cpu,
                             "wall_ns_per_pair": wall, "slowdown": cpu / base if cpu and base else None,
                             "slowdown_wall": wall / base_w if wall and base_w else None,
                             "counted_allocs_per_pair": conf})
    results["runs"]["malloc"] = runs
    results["malloc"] = {"seconds": seconds, "reps": reps, "size": 64, "rows": rows,
                         "loops": {k: v["batch"] for k, v in MALLOC_LOOPS.items()},
                         "note": "batch = malloc_loop --batch 1000 (1000 blocks allocated, then freed; the "
                                 "goals' loop), pair = --batch 1 (one block through the tcache). "
                                 "floor:forward = a preloaded shim whose malloc and free only forward to "
                                 "glibc; floor:request = one that also counts, sizing allocations by their "
                                 "request so that malloc stays a tail call (not exact: tools/bench/tracing/"
                                 "floor_shim.c); memusage = glibc's libmemusage.so. None of the three is "
                                 "traced. preload = libmapscope_preload.so traced by mapscope serve."}

    def sd(cfg, threads=1, loop="batch"):
        for r in rows:
            if r["config"] == cfg and r["threads"] == threads and r["loop"] == loop:
                return r["slowdown"]
        return None

    for key, cfg in (("preload", "preload"), ("floor_forward", "floor:forward"),
                     ("floor_request", "floor:request"), ("memusage", "memusage"), ("uprobe", "uprobe"),
                     ("bpftrace", "bpftrace"), ("memleak", "memleak")):
        results[f"malloc_slowdown_{key}"] = sd(cfg)
        results[f"malloc_slowdown_{key}_2t"] = sd(cfg, 2)
    for key, cfg in (("preload", "preload"), ("floor_forward", "floor:forward"),
                     ("floor_request", "floor:request"), ("memusage", "memusage")):
        results[f"malloc_slowdown_{key}_pair"] = sd(cfg, 1, "pair")
        results[f"malloc_slowdown_{key}_pair_2t"] = sd(cfg, 2, "pair")
    for loop in MALLOC_LOOPS:
        results[f"malloc_loop_ns_{loop}"] = next((r["cpu_ns_per_pair"] for r in rows if r["loop"] == loop
                                                  and r["threads"] == 1 and r["config"] == "none"), None)
    if skip_memleak_reason:
        results["malloc_slowdown_memleak_reason"] = skip_memleak_reason
    elif results["malloc_slowdown_memleak"] is None:
        errs = [e for e in results.get("errors", []) if " memleak:" in e]
        results["malloc_slowdown_memleak_reason"] = "every memleak run failed" + (f": {errs[0]}" if errs else "")


# ---------------------------------------------------------------------------
# D: agent cost.

def part_d(tr, seconds, results):
    target = Proc([tr.mapload, "--scenario", "storm", "--maps", "8", "--seconds", "0"])
    agents = {}
    try:
        if not target.wait_line(r"^mapload: pid=", 10):
            raise RuntimeError("mapload did not start")
        time.sleep(1.0)  # maps created, running
        agents["top"] = Proc([tr.mapscope, "top", "--pid", str(target.pid), "--interval", "1s"],
                             stdout_file=tr.out("agent-top"))
        agents["serve"] = Proc([tr.mapscope, "serve", "--pid", str(target.pid), "--listen", "127.0.0.1:0",
                                "--interval", "1s"], stdout_file=tr.out("agent-serve"))
        port = serve_port(agents["serve"])
        if not port:
            raise RuntimeError(f"serve did not start: {agents['serve'].text()}")
        time.sleep(3.0)
        c0 = {k: proc_cpu_s(a.pid) for k, a in agents.items()}
        t0 = time.monotonic()
        scrapes = 0
        while time.monotonic() - t0 < seconds:
            if scrape(port):
                scrapes += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0) % 1.0))
        t1 = time.monotonic()
        c1 = {k: proc_cpu_s(a.pid) for k, a in agents.items()}
        text = scrape(port)
        rows = []
        for k, a in agents.items():
            rows.append({"agent": k, "cpu_share": (c1[k] - c0[k]) / (t1 - t0),
                         "peak_rss_mb": proc_status(a.pid, "VmHWM") / 1024.0,
                         "rss_mb": proc_status(a.pid, "VmRSS") / 1024.0})
        # Which files each agent opens while polling (3 s of strace each).
        opened = {}
        for k, a in agents.items():
            st = subprocess.run(["timeout", "-s", "INT", "3", "strace", "-f", "-qq", "-e", "trace=open,openat",
                                 "-p", str(a.pid)], capture_output=True, text=True)
            paths = sorted(set(re.findall(r'open(?:at)?\([^"]*"([^"]+)"', st.stderr)))
            opened[k] = paths
        walkers = [p for ps in opened.values() for p in ps
                   if re.search(r"/(smaps|smaps_rollup|pagemap|numa_maps|clear_refs)$", p)]
        results["agent"] = {"seconds": seconds, "target": "mapload --scenario storm --maps 8 (2 threads)",
                            "target_maps": metric(text, "mapscope_maps"), "serve_scrapes": scrapes,
                            "rows": rows, "opened_while_polling": opened,
                            "page_table_walking_reads": walkers}
        results["agent_cpu_share"] = max(r["cpu_share"] for r in rows)
        results["agent_peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows)
        for r in rows:
            log(f"  D {r['agent']:5s} cpu {100 * r['cpu_share']:.2f}% of a core  "
                f"VmHWM {r['peak_rss_mb']:.1f} MB  opened: {' '.join(opened[r['agent']]) or '-'}")
    finally:
        for a in agents.values():
            a.stop()
        target.stop(signal.SIGINT, 20)


# ---------------------------------------------------------------------------
# Report.

def fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def goals(res):
    g = []

    def add(name, value, target, ok, detail=""):
        g.append({"goal": name, "value": value, "target": target, "met": ok, "detail": detail})

    v = res.get("healthy_attached_ratio")
    if v is not None:
        add("healthy: serve attached >= 0.95x detached (throughput)", v, ">= 0.95", v >= 0.95)
    v = res.get("healthy_attached_ratio_cpu")
    if v is not None:
        add("healthy: serve attached >= 0.95x detached (CPU per op)", v, ">= 0.95", v >= 0.95)
    a, b = res.get("probe_hit_ns_mapscope"), res.get("probe_hit_ns_bpftrace")
    c = res.get("probe_hit_ns_bpftrace_gauge")
    if a is not None and b is not None:
        add("ns per probe hit: mapscope <= bpftrace", a, f"<= {b:.0f} (bpftrace)", a <= b,
            f"bpftrace also reading a gauge: {c:.0f}" if c is not None else "")
    def floors(sfx):
        ff, fr = res.get(f"malloc_slowdown_floor_forward{sfx}"), res.get(f"malloc_slowdown_floor_request{sfx}")
        mu = res.get(f"malloc_slowdown_memusage{sfx}")
        return ", ".join(f"{name} {v:.2f}x" for name, v in (("forwarding shim", ff), ("request-counting shim", fr),
                                                             ("libmemusage", mu)) if v is not None)

    for key, lim, name in (("malloc_slowdown_preload", 1.2, "preload malloc counting, 1 thread"),
                           ("malloc_slowdown_preload_2t", 1.5, "preload malloc counting, 2 threads")):
        v = res.get(key)
        if v is not None:
            add(name, v, f"<= {lim}x", v <= lim, floors(key[len("malloc_slowdown_preload"):]))
    # The tcache-hot loop, beside the goal: not the issue's loop, reported.
    for key, lim, name in (("malloc_slowdown_preload_pair", 1.2, "(pair loop) preload, 1 thread"),
                           ("malloc_slowdown_preload_pair_2t", 1.5, "(pair loop) preload, 2 threads")):
        v = res.get(key)
        if v is not None:
            g.append({"goal": name, "value": v, "target": f"(reported; {lim}x on the batch loop)", "met": None,
                      "detail": floors(key[len("malloc_slowdown_preload"):])})
    u, m = res.get("malloc_slowdown_uprobe"), res.get("malloc_slowdown_memleak")
    if u is not None and m is not None:
        add("uprobe malloc counting <= 0.2x memleak's slowdown (1 thread)", u / m, "<= 0.2", u / m <= 0.2,
            f"{u:.1f}x vs {m:.1f}x")
    u2, m2 = res.get("malloc_slowdown_uprobe_2t"), res.get("malloc_slowdown_memleak_2t")
    if u2 is not None and m2 is not None:
        add("uprobe malloc counting <= 0.2x memleak's slowdown (2 threads)", u2 / m2, "<= 0.2", u2 / m2 <= 0.2,
            f"{u2:.1f}x vs {m2:.1f}x")
    rows = res.get("malloc", {}).get("rows", [])
    conf = [r["counted_allocs_per_pair"] for r in rows
            if r["config"] in ("uprobe", "preload") and r["counted_allocs_per_pair"]]
    if conf:
        add("malloc counts confined to the target", max(conf), "allocs counted / pairs made ~ 1.00",
            0.99 <= min(conf) and max(conf) <= 1.01)
    v = res.get("agent_cpu_share")
    if v is not None:
        add("agent < 1% of one core", v, "< 0.01", v < 0.01)
    v = res.get("agent_peak_rss_mb")
    if v is not None:
        add("agent < 50 MB RSS", v, "< 50", v < 50)
    ag = res.get("agent")
    if ag:
        add("no page-table-walking procfs read while polling", len(ag["page_table_walking_reads"]), "0",
            not ag["page_table_walking_reads"], ", ".join(ag["page_table_walking_reads"]))
    return g


def tables(res):
    """The report as (plain text, markdown)."""
    txt, md = [], []

    def section(title):
        txt.append("")
        txt.append(title)
        md.append("")
        md.append(f"**{title}**")
        md.append("")

    def table(head, rows):
        w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        txt.append("  ".join(str(h).ljust(w[i]) for i, h in enumerate(head)))
        for r in rows:
            txt.append("  ".join(str(c).rjust(w[i]) if i else str(c).ljust(w[i]) for i, c in enumerate(r)))
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + "|".join("---" for _ in head) + "|")
        for r in rows:
            md.append("| " + " | ".join(str(c) for c in r) + " |")

    ph = res.get("probe_hit")
    if ph:
        section(f"A. Probe-hit cost: mapload storm, 1 thread, {ph['seconds']} s x {ph['reps']} "
                f"(CPU ns per op of the target; hits per event {fmt(ph['hits_per_event'], '.4f')})")
        rows = []
        for r in ph["rows"]:
            rows.append([r["config"], fmt(r["mops"]), fmt(r["cpu_ns_per_op"], ".1f"),
                         fmt(r["events_per_op"], ".3f"), fmt(r["hits_per_op"], ".4f"),
                         fmt(r.get("ns_per_hit"), ".0f"), fmt(r.get("ns_per_event"), ".1f"),
                         fmt(r.get("ns_per_hit_wall"), ".0f")])
        table(["tracer", "Mops/s", "CPU ns/op", "events/op", "hits/op", "ns/hit", "ns/event", "ns/hit (wall)"], rows)
    sv = res.get("service")
    if sv:
        section(f"B. Service overhead: mapload scenarios, 2 threads, {sv['seconds']} s x {sv['reps']} "
                f"(healthy x {sv['reps_healthy']}) (throughput attached / detached)")
        rows = [[r["scenario"], fmt(r["detached_mops"], ".1f")] +
                [f"{fmt(r[c + '_ratio'], '.3f')} ({fmt(r[c + '_cpu_ratio'], '.3f')})"
                 for c in ("serve", "serve:uprobe", "serve:off")] for r in sv["rows"]]
        table(["scenario", "detached Mops/s", "serve (defaults)", "serve --malloc=uprobe", "serve --malloc=off"],
              rows)
        srcs = "; ".join(f"{r['scenario']}: {r['serve_malloc_source'] or '?'}" for r in sv["rows"])
        txt.append(f"(serve's default malloc source, as found in the target's libc text: {srcs})")
        md.append("")
        md.append(f"`serve` at its defaults (`--malloc=auto`) used, per scenario: {srcs}.")
        txt.append("(throughput ratio from mapload's ops/s; in parentheses the same from the target's CPU ns per op,\n"
                   " which is steadier on a shared machine but counts spinning on the map's mutex: storm, bloat)")
        md.append("")
        md.append("Throughput attached / detached from mapload's ops/s; in parentheses the same from the "
                  "target's CPU time per op (steadier on a shared machine, but it counts time spent spinning "
                  "on the map's mutex, which storm and bloat do).")
    mc = res.get("malloc")
    if mc:
        loops = ", ".join(f"{k} = --batch {v}" for k, v in mc.get("loops", {}).items())
        section(f"C. Malloc counting: malloc(64)/free loops ({loops}), {mc['seconds']} s x {mc['reps']} "
                f"(CPU ns per pair per thread; slowdown vs untraced)")
        rows = [[r.get("loop", "pair"), f"{r['threads']}", r["config"], fmt(r["cpu_ns_per_pair"], ".1f"),
                 fmt(r["slowdown"], ".2f") + "x", fmt(r["slowdown_wall"], ".2f") + "x",
                 fmt(r["counted_allocs_per_pair"], ".3f")]
                for r in mc["rows"]]
        table(["loop", "threads", "counting", "CPU ns/pair", "slowdown", "slowdown (wall)", "allocs counted/pair"],
              rows)
    ag = res.get("agent")
    if ag:
        section(f"D. Agent cost: {ag['target']}, {ag['seconds']} s, interval 1 s")
        rows = [[r["agent"], fmt(100 * r["cpu_share"], ".2f") + "%", fmt(r["peak_rss_mb"], ".1f")] for r in ag["rows"]]
        table(["agent", "CPU (of one core)", "peak RSS (VmHWM) MB"], rows)
    g = res.get("goals")
    if g:
        section("Goals")
        rows = [[x["goal"], fmt(x["value"], ".0f" if abs(x["value"]) >= 100 else ".3g"), x["target"],
                 {True: "met", False: "MISSED", None: "-"}[x["met"]], x["detail"]] for x in g]
        table(["goal", "measured", "target", "verdict", "detail"], rows)
    return "\n".join(txt), "\n".join(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--quick", action="store_true", help="1-2 repetitions, shorter runs (~3 min)")
    ap.add_argument("--memleak", help="libbpf-tools memleak binary (default: memleak on PATH)")
    ap.add_argument("--parts", default="abcd", help="which parts to run (default abcd)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3; quick: 2, B 1)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--agent-seconds", type=float, help="part D window (default 60; quick 15)")
    ap.add_argument("--json", help="default BUILD/bench/tracing.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("bench-tracing: needs root (BPF, uprobes)")
        return 3
    build = os.path.abspath(args.build)
    out_json = args.json or os.path.join(build, "bench", "tracing.json")
    tmp = os.path.join(build, "bench", "tracing-runs")
    os.makedirs(tmp, exist_ok=True)
    for f in os.listdir(tmp):  # the previous run's tracer outputs
        if os.path.isfile(os.path.join(tmp, f)):
            os.remove(os.path.join(tmp, f))
    tr = Tracers(build, tmp)
    tr.memusage = MEMUSAGE  # glibc's, from the system (libc6)
    q = args.quick
    reps_a = args.reps or (2 if q else 3)
    reps_b = args.reps or (1 if q else 3)
    reps_c = args.reps or (2 if q else 3)
    sec_a, sec_b, sec_c = (2, 1.5, 1) if q else (3, 2, 2)
    sec_d = args.agent_seconds or (15 if q else 60)

    # libbpf-tools' memleak: Debian 12's libbpf-tools (0.26) does not ship it,
    # and BCC's Python memleak-bpfcc needs kernel headers; give one built
    # elsewhere with --memleak (make bench-tracing MEMLEAK=/path/to/memleak).
    memleak_reason = None
    tr.memleak = args.memleak or shutil.which("memleak")
    if not tr.memleak or not os.access(tr.memleak, os.X_OK):
        memleak_reason = ("no libbpf-tools memleak binary (Debian 12's libbpf-tools 0.26 does not "
                          "ship one): make bench-tracing MEMLEAK=/path/to/memleak")
    try:
        head_rev = _run(["git", "-C", ROOT, "log", "-1", "--format=%h %ci"]).strip()
        dirty = bool(_run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).strip())
    except (subprocess.CalledProcessError, OSError):
        head_rev, dirty = None, None
    res = {"meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "kernel": os.uname().release,
                    "git": head_rev, "worktree_modified": dirty, "binaries_built": tr.versions,
                    "cpus": os.cpu_count(), "loadavg_start": loadavg(), "quick": q,
                    "bpftrace": _run(["bpftrace", "--version"]).strip()},
           "runs": {}}
    t_start = time.monotonic()
    log(f"bench-tracing: load {loadavg()}; parts {args.parts}{' (quick)' if q else ''}")

    def stop_all(signum, frame):
        Proc.kill_all()
        sys.exit(130)

    signal.signal(signal.SIGTERM, stop_all)
    parts = [("a", "A. probe-hit cost (storm, 1 thread)", lambda: part_a(tr, reps_a, sec_a, res)),
             ("b", "B. service overhead",
              lambda: part_b(tr, reps_b, sec_b, [s for s in args.scenarios.split(",") if s], res)),
             ("c", "C. malloc counting", lambda: part_c(tr, reps_c, sec_c, res, memleak_reason)),
             ("d", f"D. agent cost ({sec_d:.0f} s)", lambda: part_d(tr, sec_d, res))]
    try:
        for key, title, fn in parts:
            if key not in args.parts:
                continue
            log(title)
            attempt(res, title, fn)
    except KeyboardInterrupt:
        Proc.kill_all()
        raise
    finally:
        Proc.kill_all()
    res["meta"]["loadavg_end"] = loadavg()
    res["meta"]["seconds"] = round(time.monotonic() - t_start, 1)
    for k in ("healthy_attached_ratio", "probe_hit_ns_mapscope", "probe_hit_ns_bpftrace",
              "malloc_slowdown_preload", "malloc_slowdown_uprobe", "malloc_slowdown_bpftrace",
              "malloc_slowdown_memleak", "agent_cpu_share", "agent_peak_rss_mb"):
        res.setdefault(k, None)
    res["goals"] = goals(res)
    txt, md = tables(res)
    head = (f"bench-tracing: kernel {res['meta']['kernel']}, {res['meta']['cpus']} CPUs, "
            f"load {res['meta']['loadavg_start']} -> {res['meta']['loadavg_end']}, "
            f"{res['meta']['seconds']:.0f} s")
    print(head)
    print(txt)
    if res.get("errors"):
        print("\nFAILED runs (left out of the medians):")
        for e in res["errors"]:
            print("  " + e)
    ordered = {k: res[k] for k in ("healthy_attached_ratio", "probe_hit_ns_mapscope", "probe_hit_ns_bpftrace",
                                   "malloc_slowdown_preload", "malloc_slowdown_uprobe",
                                   "malloc_slowdown_bpftrace", "malloc_slowdown_memleak",
                                   "agent_cpu_share", "agent_peak_rss_mb")}
    ordered.update({k: v for k, v in res.items() if k not in ordered})
    with open(out_json, "w") as f:
        json.dump(ordered, f, indent=1)
    with open(os.path.splitext(out_json)[0] + ".md", "w") as f:
        f.write(head + "\n" + md + "\n")
    print(f"\nwrote {out_json} and {os.path.splitext(out_json)[0]}.md")
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
