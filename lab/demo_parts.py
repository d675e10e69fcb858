#!/usr/bin/env python3
"""The Python parts of lab/demo: the local alert receiver, the agents' configs, the banner's
timeline summary, the timeline and alert lines, and the wait for the matrix to settle.

Kept in one file so that every line is compiled by `python3 -m py_compile lab/demo_parts.py`
(Python 3.11, Debian 12's, and newer; stdlib only). Run as `demo_parts.py COMMAND ARGS...`.
"""

import http.server
import json
import os
import socketserver
import subprocess
import sys
import time
import tomllib
import urllib.request


def event_line(event: dict) -> str:
    """One alert as the page's event list words it (dashboard/app.js, eventItem): the kind and
    the scope, then who (provider / account / agent, whichever apply), the target, :port, the
    family, from → to and the outcome. Fields that do not apply to the scope are null and left
    out, so a destination event reads `destination outage destination mx.lab.test :2525 …`."""
    if "raw" in event:
        return f"(not JSON) {event['raw']}"
    kind = str(event.get("kind") or "").replace("_", " ")
    parts = [kind, str(event.get("scope") or "")]
    who = " / ".join(str(event[k]) for k in ("provider", "account", "agent") if event.get(k) not in (None, ""))
    if who:
        parts.append(who)
    if event.get("target"):
        parts.append(str(event["target"]))
    if event.get("port") is not None:
        parts.append(f":{event['port']}")
    if event.get("family"):
        parts.append(str(event["family"]))
    parts.append(f"{event.get('from')} → {event.get('to')}")
    if event.get("outcome"):
        parts.append(f"({event['outcome']})")
    return " ".join(p for p in parts if p)


def receiver(out_path: str) -> None:
    """Prints every webhook it gets as an ALERT line and appends its JSON to out_path. Prints its
    port on stdout first."""

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            self.send_response(200)
            self.end_headers()
            try:
                event = json.loads(body)
            except ValueError:
                event = {"raw": body.decode("utf-8", "replace")}
            with open(out_path, "a") as f:
                f.write(json.dumps(event, sort_keys=True) + "\n")
            print(f"ALERT  {event_line(event)}", file=sys.stderr, flush=True)

        def log_message(self, *args):
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), Receiver)
    print(server.server_address[1], flush=True)
    server.serve_forever()


AGENT_TOML = """[collector]
address = "collector.lab.test:4433"
ca = "{work}/data/ca/ca.pem"
cert = "{work}/agents/{name}.crt"
key = "{work}/agents/{name}.key"
[labels]
provider = {provider}
account = {account}
region = {region}
instance = {instance}
[[targets]]
host = "mx.lab.test"
ports = [25, 465, 587, 2525, 443]
level = "banner"
interval = "{interval}s"
[probe]
timeout = "{timeout}s"
min_interval_per_destination = "1s"
ca_file = "{ca_file}"
[spool]
dir = "{work}/spool/{name}"
[identity]
metadata = false
"""

# The agents' probe interval and timeout (seconds): what settle_estimate counts with.
PROBE_INTERVAL_S = 3
PROBE_TIMEOUT_S = 3


def agent_configs(work: str, collector: str) -> None:
    """One certificate (issued by the collector's CA) and one config per simulated VM."""
    with open(os.path.join(work, "lab.json")) as f:
        lab = json.load(f)
    # Tests may give some hosts other labels (e.g. a hostile one): {"host": {"region": "..."}}.
    overrides = json.loads(os.environ.get("EGRESSWATCH_DEMO_LABELS") or "{}")
    for h in lab["hosts"]:
        name = h["name"]
        labels = {"provider": h["provider"], "account": h["account"], "region": "lab-1", "instance": name}
        labels.update(overrides.get(name, {}))
        subprocess.run([collector, "ca", "issue", "--dir", f"{work}/data/ca", name, "--out", f"{work}/agents"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(f"{work}/agents/{name}.toml", "w") as f:
            f.write(AGENT_TOML.format(
                work=work, name=name, ca_file=lab["destination"]["ca_file"],
                interval=PROBE_INTERVAL_S, timeout=PROBE_TIMEOUT_S,
                **{k: json.dumps(labels[k]) for k in ("provider", "account", "region", "instance")}))


def lab_summary(lab_json: str) -> None:
    """`HOSTS PROVIDERS` of the lab that is up."""
    with open(lab_json) as f:
        lab = json.load(f)
    print(len(lab["hosts"]), len(lab["providers"]))


def timeline_summary(scenario: str) -> None:
    """The scenario's timeline in one line for the banner: `25 s: note; 70 s: note`."""
    with open(scenario, "rb") as f:
        steps = tomllib.load(f).get("timeline", [])
    print("; ".join(f"{step['at']} s: {step.get('note', '')}" for step in steps) or "none")


def timeline_lines() -> None:
    """Reads `egresslab play`'s JSON lines on stdin and prints one TIMELINE line each."""
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            step = json.loads(line)
        except ValueError:
            print(f"TIMELINE {line}", flush=True)
            continue
        what = step.get("note") or {k: v for k, v in step.items() if k not in ("at", "elapsed")}
        print(f"TIMELINE {step.get('elapsed', 0):.0f} s: {what}", flush=True)


def settle_estimates(confirm_probes: int) -> tuple[int, int]:
    """Seconds until every agent has reported every port (one probe round: an interval plus the
    probe timeout, give or take the agents' start), and until the detector has confirmed each
    state (confirm_probes rounds), after which a change is alerted."""
    first_round = PROBE_INTERVAL_S + PROBE_TIMEOUT_S
    return first_round, (confirm_probes - 1) * PROBE_INTERVAL_S + first_round


def matrix_settled(matrix: dict, agents: int) -> bool:
    """Every agent counted and no provider cell unknown."""
    providers = matrix.get("providers") or []
    if sum(p.get("agents", 0) for p in providers) < agents:
        return False
    return all(c.get("status") != "unknown" for p in providers for c in (p.get("cells") or {}).values())


def matrix_rows(matrix: dict) -> list[str]:
    """`  gcp  25 blocked · 465 open · …` per provider, in the matrix's port order."""
    ports = [str(p) for p in matrix.get("ports") or []]
    rows = []
    for p in matrix.get("providers") or []:
        cells = p.get("cells") or {}
        row = " · ".join(f"{port} {cells[port]['status']}" for port in ports if port in cells)
        rows.append(f"  {p.get('provider')}  {row}")
    return rows


def wait_settled(http: str, agents: str, confirm_probes: str) -> None:
    """Says when the matrix should have settled, then polls /api/matrix (bounded) and prints it
    once every agent has reported every port."""
    agents_n, confirm = int(agents), int(confirm_probes)
    first_round, confirmed = settle_estimates(confirm)
    started = time.monotonic()

    def clock(after: int) -> str:
        return time.strftime("%H:%M:%S", time.localtime(time.time() + after))

    print(f"MATRIX {agents_n} agents probing every {PROBE_INTERVAL_S} s: every cell should be filled by "
          f"{clock(first_round)} (one round, about {first_round} s) and confirmed by {clock(confirmed)} "
          f"({confirm} probes); changes after that are alerted", flush=True)
    deadline = started + max(120, 4 * confirmed)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    while time.monotonic() < deadline:
        try:
            with direct.open(f"http://{http}/api/matrix", timeout=2) as resp:
                matrix = json.load(resp)
        except (OSError, ValueError):
            matrix = {}
        if matrix and matrix_settled(matrix, agents_n):
            print(f"MATRIX settled after {time.monotonic() - started:.0f} s: every agent reported every port",
                  flush=True)
            for row in matrix_rows(matrix):
                print(row, flush=True)
            return
        time.sleep(1)
    print(f"MATRIX not settled after {time.monotonic() - started:.0f} s (see the page)", flush=True)


COMMANDS = {
    "receiver": receiver,
    "agent-configs": agent_configs,
    "lab-summary": lab_summary,
    "timeline-summary": timeline_summary,
    "timeline-lines": timeline_lines,
    "wait-settled": wait_settled,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: demo_parts.py {'|'.join(COMMANDS)} ARGS...")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
