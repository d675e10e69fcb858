#!/usr/bin/env python3
"""The measuring and reporting half of bench/compare.sh (stdlib only).

compare.sh builds the lab and starts the processes; the steps here each do one measurement and
leave JSON in the run's work directory, and `report` turns those files into the table (stdout)
and bench/RESULTS.md. Nothing in the table is typed in: every figure is read from a file a
measuring step wrote in the same run.

Subcommands:
  blackbox-config CA TIMEOUT OUT   blackbox_exporter modules matching the agent's probes
  receiver OUT PORTFILE            webhook receiver: one JSON line per POST, with arrival time
  sample OUT INTERVAL NAME=PID...  /proc sampler: VmRSS, VmHWM, utime+stime, every INTERVAL s
  proc NAME=PID...                 one /proc snapshot as JSON (CPU seconds, VmRSS, VmHWM)
  prom-query URL QUERY [TIME]      one instant PromQL query, the first value printed
  prom-first-zero URL FLIP_MS INSTANCE   the first failed probe after the flip, and the gaps
                                   between failed probes of one series, from Prometheus' samples
  probe-bodies URL OUT TARGET=MODULE...   /probe body sizes, plain and gzip
  outcomes AGENT CA BLACKBOX TIMEOUT OUT  the outcome cases: agent check vs blackbox /probe
  wait-alerts FLIP_MS EW_FILE BB_FILE DEADLINE_S OUT   first alert on each path after the flip
  count-alerts FROM_MS TO_MS EW_FILE BB_FILE          problem alerts on each path in a window (JSON)
  meta WORK KEY VALUE              one figure or setting for the report (VALUE is JSON if it parses)
  report WORK RESULTS_MD COMMAND   the table, printed and written
"""

import gzip
import http.server
import json
import os
import socketserver
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PORTS = [25, 465, 587, 2525, 443]
FAMILIES = ["ipv4", "ipv6"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------
# blackbox_exporter configuration


def module_for(port: int, family: str) -> str:
    """The blackbox module doing what the agent does on this port (level tls)."""
    kind = "tls" if port == 443 else "smtps" if port == 465 else "smtp_starttls"
    return f"{kind}_{family}"


def blackbox_config(ca: str, timeout_s: str, out: str) -> None:
    # The SMTP STARTTLS module is blackbox_exporter's own example (example.yml, smtp_starttls),
    # ending like the agent's probe: after the handshake, QUIT. Each family gets its own module
    # with fallback off, as the agent probes each family on its own.
    lines = ["modules:"]
    for family, proto in (("ipv4", "ip4"), ("ipv6", "ip6")):
        common = [
            "    prober: tcp",
            f"    timeout: {timeout_s}s",
            "    tcp:",
            f"      preferred_ip_protocol: {proto}",
            "      ip_protocol_fallback: false",
            "      tls_config:",
            f"        ca_file: {json.dumps(ca)}",
        ]
        lines += [f"  smtp_starttls_{family}:"] + common + [
            "      query_response:",
            '        - expect: "^220 ([^ ]+) ESMTP (.+)$"',
            '        - send: "EHLO prober\\r"',
            '        - expect: "^250[- ]STARTTLS"',
            '        - send: "STARTTLS\\r"',
            '        - expect: "^220"',
            "        - starttls: true",
            '        - send: "QUIT\\r"',
        ]
        lines += [f"  smtps_{family}:"] + common + [
            "      tls: true",
            "      query_response:",
            '        - expect: "^220 ([^ ]+) ESMTP (.+)$"',
            '        - send: "QUIT\\r"',
        ]
        lines += [f"  tls_{family}:"] + common + ["      tls: true"]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# webhook receiver


def receiver(out: str, port_file: str) -> None:
    lock = threading.Lock()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            at = now_ms()
            length = int(self.headers.get("Content-Length", 0) or 0)
            body = self.rfile.read(min(length, 1 << 20))
            self.send_response(200)
            self.end_headers()
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {"raw": body.decode("utf-8", "replace")}
            with lock, open(out, "a") as f:
                f.write(json.dumps({"received_ms": at, "body": parsed}) + "\n")

        def log_message(self, *args):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Receiver)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


# ---------------------------------------------------------------------------------------------
# /proc


def proc_figures(pid: int) -> dict:
    """CPU seconds (utime+stime), VmRSS and VmHWM in KiB of one process."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Name"):
                status[key] = value.strip()
    return {
        "cpu_s": cpu,
        "rss_kib": int(status["VmRSS"].split()[0]),
        "hwm_kib": int(status["VmHWM"].split()[0]),
        "name": status.get("Name", "?"),
    }


def parse_pids(args: list[str]) -> dict[str, int]:
    pids = {}
    for a in args:
        name, _, pid = a.partition("=")
        pids[name] = int(pid)
    return pids


def proc_snapshot(args: list[str]) -> None:
    print(json.dumps({"at_ms": now_ms(), **{n: proc_figures(p) for n, p in parse_pids(args).items()}}))


def sample(out: str, interval: str, args: list[str]) -> None:
    pids = parse_pids(args)
    step = float(interval)
    # Bounded: a sampler outliving its run stops by itself after a day.
    for _ in range(int(86400 / step)):
        row = {"at_ms": now_ms()}
        for name, pid in pids.items():
            try:
                row[name] = proc_figures(pid)
            except (OSError, ValueError, KeyError):
                row[name] = None
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        time.sleep(step)


# ---------------------------------------------------------------------------------------------
# Prometheus and blackbox_exporter over HTTP


def http_get(url: str, timeout: float = 30, gzip_ok: bool = False) -> tuple[bytes, dict]:
    req = urllib.request.Request(url)
    if gzip_ok:
        req.add_header("Accept-Encoding", "gzip")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read(), dict(resp.headers)


def prom_query(url: str, query: str, at: str | None = None) -> None:
    params = {"query": query}
    if at:
        params["time"] = at
    body, _ = http_get(f"{url}/api/v1/query?{urllib.parse.urlencode(params)}")
    data = json.loads(body)
    if data.get("status") != "success":
        raise SystemExit(f"prometheus query failed: {data}")
    result = data["data"]["result"]
    print(result[0]["value"][1] if result else "0")


def prom_first_zero(url: str, flip_ms: str, instance: str) -> None:
    """Time (ms) of the first stored probe_success == 0 of INSTANCE at or after the flip."""
    flip = int(flip_ms) / 1000
    span = max(int(time.time() - flip) + 5, 1)
    query = f'probe_success{{job="smtp",instance="{instance}"}}[{span}s]'
    body, _ = http_get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}")
    data = json.loads(body)
    if data.get("status") != "success":
        raise SystemExit(f"prometheus query failed: {data}")
    zeros = [float(t) for series in data["data"]["result"] for t, v in series["values"]
             if float(t) >= flip and float(v) == 0]
    gaps = []
    for series in data["data"]["result"]:
        ts = [float(t) for t, v in series["values"] if float(t) >= flip and float(v) == 0]
        gaps += [b - a for a, b in zip(ts, ts[1:])]
    print(json.dumps({"first_ms": int(min(zeros) * 1000) if zeros else None,
                      "median_gap_s": statistics.median(gaps) if gaps else None}))


def parse_exposition(text: str) -> dict[str, float]:
    """name{labels} -> value, for the samples of a Prometheus text exposition."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            samples[key] = float(value)
        except ValueError:
            continue
    return samples


def probe_bodies(url: str, out: str, args: list[str]) -> None:
    rows = []
    for a in args:
        target, _, module = a.partition("=")
        q = urllib.parse.urlencode({"target": target, "module": module})
        plain, _ = http_get(f"{url}/probe?{q}")
        gz, headers = http_get(f"{url}/probe?{q}", gzip_ok=True)
        rows.append({
            "target": target, "module": module, "plain_bytes": len(plain), "gzip_bytes": len(gz),
            "gzip_encoded": headers.get("Content-Encoding") == "gzip",
            "samples": len(parse_exposition(plain.decode("utf-8", "replace"))),
        })
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


# ---------------------------------------------------------------------------------------------
# outcomes: the same failure cases through both tools

# How the lab makes each case (bench/compare.toml and lab/README.md): this is the set-up, not a
# result. What each tool reports for it is measured below.
CASES = [
    ("ok", 2525, "open path (destination's 2525, no rule)"),
    ("timeout", 25, "edge drops 25"),
    ("refused", 465, "edge answers 465 with a TCP reset"),
    ("unreachable", 587, "edge rejects 587 with ICMP admin-prohibited"),
    ("stripped STARTTLS", 2526, "destination's 2526 offers no STARTTLS"),
    ("intercepted TLS", 2465, "destination's 2465 presents a certificate for another name"),
]


def outcomes(agent: str, ca: str, blackbox: str, timeout_s: str, out: str) -> None:
    timeout = float(timeout_s)
    ports = [p for _, p, _ in CASES]

    def run_agent():
        cmd = [agent, "check", "mx.lab.test", "--timeout", f"{timeout_s}s", "--json", "--ca-file", ca]
        for p in ports:
            cmd += ["--port", str(p)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * 4 + 30)
        return json.loads(done.stdout)

    def run_blackbox(port: int, family: str):
        module = module_for(465 if port == 465 else 25, family)
        q = urllib.parse.urlencode({"target": f"mx.lab.test:{port}", "module": module})
        started = time.monotonic()
        body, _ = http_get(f"{blackbox}/probe?{q}", timeout=timeout * 3)
        metrics = parse_exposition(body.decode("utf-8", "replace"))
        debug, _ = http_get(f"{blackbox}/probe?{q}&debug=true", timeout=timeout * 3)
        errors = [line for line in debug.decode("utf-8", "replace").splitlines()
                  if "level=error" in line]
        return {"module": module, "metrics": metrics, "wall_s": time.monotonic() - started,
                "errors": errors}

    with ThreadPoolExecutor(max_workers=len(CASES) * 2 + 1) as pool:
        agent_future = pool.submit(run_agent)
        bb_futures = {(p, fam): pool.submit(run_blackbox, p, fam) for _, p, _ in CASES for fam in FAMILIES}
        agent_rows = agent_future.result()
        bb = {k: f.result() for k, f in bb_futures.items()}

    result = []
    for case, port, setup in CASES:
        entry = {"case": case, "port": port, "setup": setup, "agent": {}, "blackbox": {}}
        for fam in FAMILIES:
            row = next((r for r in agent_rows if r["port"] == port and r["family"] == fam), None)
            entry["agent"][fam] = {"outcome": row["outcome"] if row else "missing",
                                   "detail": row["detail"] if row else ""}
            m = bb[(port, fam)]["metrics"]
            duration = m.get("probe_duration_seconds", 0.0)
            entry["blackbox"][fam] = {
                "module": bb[(port, fam)]["module"],
                "probe_success": m.get("probe_success"),
                "probe_failed_due_to_regex": m.get("probe_failed_due_to_regex"),
                "probe_duration_seconds": duration,
                # Ran into the module's deadline (blackbox subtracts a 0.5 s offset at most).
                "at_deadline": duration >= timeout - 0.6,
                "metric_names": sorted({k.split("{")[0] for k in m}),
                # The first error is the cause; the last is always "Probe failed".
                "error": bb[(port, fam)]["errors"][0] if bb[(port, fam)]["errors"] else "",
            }
        result.append(entry)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


def agent_signature(entry: dict, fam: str):
    return entry["agent"][fam]["outcome"]


def blackbox_signature(entry: dict, fam: str):
    """Everything a Prometheus user has of one probe: the values and which metrics exist."""
    b = entry["blackbox"][fam]
    return (b["probe_success"], b["probe_failed_due_to_regex"], b["at_deadline"],
            tuple(b["metric_names"]))


def distinguishes(signature, x: dict, y: dict) -> str:
    differ = [fam for fam in FAMILIES if signature(x, fam) != signature(y, fam)]
    if len(differ) == len(FAMILIES):
        return "yes"
    if not differ:
        return "no"
    return f"{differ[0]} only"


# ---------------------------------------------------------------------------------------------
# alerts


def wait_alerts(flip_ms: str, ew_file: str, bb_file: str, deadline_s: str, out: str) -> None:
    flip = int(flip_ms)
    deadline = time.monotonic() + float(deadline_s)

    def first(path: str, is_it) -> dict | None:
        try:
            with open(path) as f:
                lines = f.readlines()
        except OSError:
            return None
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec["received_ms"] >= flip and is_it(rec["body"]):
                return rec
        return None

    def ew_is(body):
        return body.get("port") == 587 and body.get("to") == "blocked"

    def bb_is(body):
        return body.get("status") == "firing" and any(
            a.get("labels", {}).get("instance", "").endswith(":587") for a in body.get("alerts", []))

    ew = bb = None
    while time.monotonic() < deadline:
        ew = ew or first(ew_file, ew_is)
        bb = bb or first(bb_file, bb_is)
        if ew and bb:
            break
        time.sleep(0.5)
    with open(out, "w") as f:
        json.dump({"flip_ms": flip, "egresswatch": ew, "blackbox": bb}, f, indent=1)


def count_alerts(from_ms: str, to_ms: str, ew_file: str, bb_file: str) -> None:
    """Alerts that say something broke, on each path, received within [from_ms, to_ms]: during
    the lossy window every one of them is a false alert (nothing changed but packet loss)."""
    lo, hi = int(from_ms), int(to_ms)

    def count(path: str, is_problem) -> int:
        n = 0
        try:
            with open(path) as f:
                lines = f.readlines()
        except OSError:
            return 0
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if lo <= rec["received_ms"] <= hi and is_problem(rec["body"]):
                n += 1
        return n

    def ew_problem(body):
        return body.get("to") in ("blocked", "flapping", "silent")

    def bb_problem(body):
        return body.get("status") == "firing"

    print(json.dumps({"egresswatch": count(ew_file, ew_problem), "blackbox": count(bb_file, bb_problem)}))


# ---------------------------------------------------------------------------------------------
# the report


def load(path: str):
    with open(path) as f:
        return json.load(f)


def mib(kib: float) -> str:
    return f"{kib / 1024:.2f} MiB"


def report(work: str, results_md: str, command: str) -> None:
    meta = {}
    with open(os.path.join(work, "meta.jsonl")) as f:
        for line in f:
            meta.update(json.loads(line))
    p0 = load(os.path.join(work, "proc0.json"))
    p1 = load(os.path.join(work, "proc1.json"))
    samples = []
    with open(os.path.join(work, "samples.jsonl")) as f:
        for line in f:
            samples.append(json.loads(line))
    t0, t1 = p0["at_ms"], p1["at_ms"]
    tail_from = t1 - (t1 - t0) / 3
    tail = [s for s in samples if tail_from <= s["at_ms"] <= t1]

    def steady(name):
        values = [s[name]["rss_kib"] for s in tail if s.get(name)]
        return statistics.mean(values) if values else float("nan")

    probes = {"agent": meta["agent_probes"], "blackbox": meta["blackbox_probes"],
              "collector": meta["agent_probes"], "prometheus": meta["blackbox_probes"]}

    def cpu_per_k(name):
        cpu = p1[name]["cpu_s"] - p0[name]["cpu_s"]
        return cpu, (cpu / probes[name] * 1000 if probes[name] else float("nan"))

    window_s = (t1 - t0) / 1000
    rows = []  # (figure, egresswatch, blackbox path, goal, reached)

    def goal_row(figure, ew, bb, goal, ok):
        rows.append((figure, ew, bb, goal, "reached" if ok else "not reached"))

    def info_row(figure, ew, bb):
        rows.append((figure, ew, bb, "", ""))

    ew_steady, bb_steady = steady("agent"), steady("blackbox")
    goal_row("steady RSS (mean VmRSS, last third of the window)", mib(ew_steady), mib(bb_steady),
             "agent <= 8 MiB and <= half of blackbox's",
             ew_steady <= 8 * 1024 and ew_steady <= bb_steady / 2)
    info_row("peak RSS (VmHWM)", mib(p1["agent"]["hwm_kib"]), mib(p1["blackbox"]["hwm_kib"]))
    ew_cpu, ew_k = cpu_per_k("agent")
    bb_cpu, bb_k = cpu_per_k("blackbox")
    info_row(f"probes in the {window_s:.0f} s window (ok)",
             f"{probes['agent']} ({meta['agent_ok']})", f"{probes['blackbox']} ({meta['blackbox_ok']})")
    info_row("CPU seconds in the window (utime+stime)", f"{ew_cpu:.2f} s", f"{bb_cpu:.2f} s")
    goal_row("CPU seconds per 1,000 probes", f"{ew_k:.3f} s", f"{bb_k:.3f} s",
             "agent <= half of blackbox's", ew_k <= bb_k / 2)
    info_row("binary size", meta["agent_size"], meta["blackbox_size"])
    col_cpu, col_k = cpu_per_k("collector")
    prom_cpu, prom_k = cpu_per_k("prometheus")
    info_row("the other half (collector; Prometheus): steady RSS", mib(steady("collector")),
             mib(steady("prometheus")))
    goal_row("the other half (collector; Prometheus): CPU seconds per 1,000 results",
             f"{col_k:.3f} s", f"{prom_k:.3f} s", "collector below Prometheus", col_k < prom_k)
    info_row("the other half (collector; Prometheus): binary size", meta["collector_size"],
             meta["prometheus_size"])

    tsdb = meta.get("tsdb")
    if isinstance(tsdb, dict) and float(tsdb.get("samples") or 0) > 0:
        per_sample = tsdb["snapshot_bytes"] / float(tsdb["samples"])
        per_probe = per_sample * float(tsdb["samples_per_probe"])
        info_row("Prometheus TSDB bytes per blackbox probe (snapshot bytes / samples appended x "
                 "samples per probe)", "see bench/history.sh",
                 f"{per_probe:.1f} ({per_sample:.2f} per sample x {float(tsdb['samples_per_probe']):.1f} samples)")

    alerts = load(os.path.join(work, "alerts.json"))

    def delay(key):
        rec = alerts.get(key)
        return (rec["received_ms"] - alerts["flip_ms"]) / 1000 if rec else None

    ew_d, bb_d = delay("egresswatch"), delay("blackbox")
    fmt = lambda d: f"{d:.1f} s" if d is not None else f"none within {meta['alert_wait_s']} s"
    goal_row("policy flip (587 -> drop) to alert at the webhook", fmt(ew_d), fmt(bb_d),
             "egresswatch <= 20 s", ew_d is not None and ew_d <= 20)
    lossy = meta.get("lossy")
    if isinstance(lossy, dict):
        goal_row(f"false alerts during {lossy['secs']} s of {lossy['percent']} % packet loss "
                 "(every link, nothing else changed)",
                 str(lossy["egresswatch"]), str(lossy["blackbox"]), "0 for both",
                 lossy["egresswatch"] == 0 and lossy["blackbox"] == 0)

    def since_flip(ms):
        return f"{(ms - alerts['flip_ms']) / 1000:.1f} s" if isinstance(ms, (int, float)) else "none"

    ew_fail, bb_fail = meta.get("ew_fail") or {}, meta.get("bb_fail") or {}
    info_row("  of which: flip to the start of the first failed 587 probe",
             since_flip(ew_fail.get("first_ms")), since_flip(bb_fail.get("first_ms")))
    gap = lambda g: f"{g:.1f} s" if isinstance(g, (int, float)) else "none"
    info_row("  time between failed 587 probes of one series after the flip (median)",
             gap(ew_fail.get("median_gap_s")), gap(bb_fail.get("median_gap_s")))
    wire = meta["wire"]
    info_row("on-wire bytes per probe result, window (IP packets, both directions)",
             f"{wire['ew_bytes'] / max(probes['agent'], 1):.1f}",
             f"{wire['bb_bytes'] / max(probes['blackbox'], 1):.1f}")
    info_row("egresswatch batches received in the window (results per batch)",
             f"{wire['ew_batches']} ({probes['agent'] / max(wire['ew_batches'], 1):.1f})", "")
    bodies = load(os.path.join(work, "probe_bodies.json"))
    plain = statistics.mean(b["plain_bytes"] for b in bodies)
    gz = statistics.mean(b["gzip_bytes"] for b in bodies)
    info_row("scrape body bytes per probe result: /probe plain; gzip (Prometheus asks for gzip)",
             "", f"{plain:.0f}; {gz:.0f}")
    for line in meta.get("ingest_rows", []):
        if "batch of 20 " in line or "batch of 500 " in line:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            info_row(f"egresswatch {cells[0]} (bench/ingest.sh)", cells[1], "")
    for line in meta.get("ingest_rows", []):
        if "ingest rate" in line or "agent connections" in line:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            label = cells[0] if cells[0].startswith("collector") else f"collector {cells[0]}"
            info_row(f"{label} (bench/ingest.sh)", cells[1], "")

    # outcomes
    cases = load(os.path.join(work, "outcomes.json"))
    outcome_lines = ["| case (how the lab makes it) | agent ipv4 / ipv6 | blackbox ipv4 / ipv6: probe_success, probe_failed_due_to_regex, probe_duration_seconds |",
                     "|---|---|---|"]
    for c in cases:
        a = " / ".join(c["agent"][f]["outcome"] for f in FAMILIES)
        b = " / ".join(
            f"{c['blackbox'][f]['probe_success']:g}, {c['blackbox'][f]['probe_failed_due_to_regex']:g}, "
            f"{c['blackbox'][f]['probe_duration_seconds']:.3f}" for f in FAMILIES)
        outcome_lines.append(f"| {c['case']} ({c['setup']}) | {a} | {b} |")
    matrix_lines = ["| distinguishes X from Y | egresswatch-agent | blackbox_exporter |", "|---|---|---|"]
    ew_count = bb_count = pairs = 0
    for i, x in enumerate(cases):
        for y in cases[i + 1:]:
            e = distinguishes(agent_signature, x, y)
            b = distinguishes(blackbox_signature, x, y)
            pairs += 1
            ew_count += e == "yes"
            bb_count += b == "yes"
            matrix_lines.append(f"| {x['case']} from {y['case']} | {e} | {b} |")
    info_row("outcome pairs told apart, both families (of the matrix below)",
             f"{ew_count} of {pairs}", f"{bb_count} of {pairs}")
    error_lines = []
    for c in cases:
        for f in FAMILIES:
            err = c["blackbox"][f]["error"]
            if err:
                msg = err.split(" msg=", 1)[-1][:200]
                error_lines.append(f"- {c['case']} {f}: blackbox debug log: `{msg}`; agent: `{c['agent'][f]['detail'][:200]}`")

    table = ["| figure | egresswatch | blackbox_exporter + Prometheus | goal | |", "|---|---|---|---|---|"]
    for r in rows:
        table.append("| " + " | ".join(r) + " |")

    print()
    print("\n".join(table))
    print()
    print("\n".join(matrix_lines))

    m = meta["machine"]
    md = [
        "# bench/compare.sh — egresswatch vs Prometheus blackbox_exporter",
        "",
        "Generated by `bench/compare.sh`; every figure below was measured in one run on one lab.",
        "",
        f"- date: {meta['date']}",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem']} memory, Linux {m['kernel']}; "
        f"load average at the start {m['load']}",
        f"- command: `{command}`",
        f"- settings: probe interval {meta['interval_s']} s for both (agent `interval`, Prometheus "
        f"`scrape_interval`), probe timeout {meta['timeout_s']} s, level tls, ports "
        f"{', '.join(map(str, PORTS))} over IPv4 and IPv6 to the lab's Postfix (mx.lab.test); "
        f"measuring window {window_s:.0f} s after {meta['warmup_s']} s of warm-up",
        f"- versions: {meta['versions']}",
        "",
        "## Table",
        "",
        *table,
        "",
        "Alert paths: egresswatch = collector and agent defaults (the detector's sequential test, "
        "the agent's confirmation probes, the collector's fan-out to the other agents probing the "
        "destination) → generic webhook sink. Prometheus = `probe_success == 0` with "
        f"`for: {meta['prom_for']}`, `evaluation_interval` = scrape interval, Alertmanager "
        f"`group_wait: {meta['am_group_wait']}` → webhook receiver.",
        "",
        "On-wire bytes: egresswatch counts the agent's QUIC datagrams (both directions, "
        "keep-alives and acks included) in its VM; the Prometheus path counts the scrapes' TCP "
        "packets to and from blackbox_exporter's port on the VM's loopback.",
        "",
        "## Which outcomes each tells apart",
        "",
        "What each reported for each case, over IPv4 / IPv6:",
        "",
        *outcome_lines,
        "",
        "Derived from those outputs: a tool tells X from Y when what it reports differs. The agent "
        "reports an outcome; for blackbox_exporter the comparison uses everything Prometheus "
        "stores of a probe: probe_success, probe_failed_due_to_regex, whether "
        "probe_duration_seconds reached the module timeout, and which metrics exist.",
        "",
        *matrix_lines,
        "",
        "blackbox_exporter keeps the reason only in its log (the `&debug=true` output, and the "
        "last probes on its own page); Prometheus stores none of it. Side by side with the "
        "agent's detail:",
        "",
        *error_lines,
        "",
    ]
    with open(results_md, "w") as f:
        f.write("\n".join(md))


def main() -> None:
    args = sys.argv[1:]
    if not args:
        raise SystemExit(__doc__)
    cmd, rest = args[0], args[1:]
    if cmd == "blackbox-config":
        blackbox_config(*rest)
    elif cmd == "receiver":
        receiver(*rest)
    elif cmd == "sample":
        sample(rest[0], rest[1], rest[2:])
    elif cmd == "proc":
        proc_snapshot(rest)
    elif cmd == "prom-query":
        prom_query(*rest)
    elif cmd == "prom-first-zero":
        prom_first_zero(*rest)
    elif cmd == "probe-bodies":
        probe_bodies(rest[0], rest[1], rest[2:])
    elif cmd == "outcomes":
        outcomes(*rest)
    elif cmd == "count-alerts":
        count_alerts(*rest[:4])
    elif cmd == "wait-alerts":
        wait_alerts(*rest)
    elif cmd == "meta":
        work, key, value = rest
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        with open(os.path.join(work, "meta.jsonl"), "a") as f:
            f.write(json.dumps({key: parsed}) + "\n")
    elif cmd == "report":
        report(*rest)
    else:
        raise SystemExit(f"unknown subcommand {cmd}\n{__doc__}")


if __name__ == "__main__":
    main()
