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
{mail_target}[probe]
timeout = "{timeout}s"
min_interval_per_destination = "1s"
ca_file = "{ca_file}"
[spool]
dir = "{work}/spool/{name}"
[identity]
metadata = false
"""

# An account's agents that watch a mail provider also probe its preset (its SMTP host with the
# preset's ports, its API host on 443), at level tls so that the API's certificate is checked.
MAIL_TARGET_TOML = """[[targets]]
provider = {preset}
level = "tls"
interval = "{interval}s"
"""

PRESETS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "agent", "presets",
                            "mail-providers.toml")


def demo_mail_provider(scenario: str, lab: dict) -> tuple[str, list[str]] | None:
    """The scenario's `[demo] mail_provider = { preset = "…", accounts = ["provider/account", …] }`
    checked against the lab: `(preset, accounts)`, or None when the scenario has none. Exits with
    a message naming the key when something does not fit, before any agent starts: an unknown
    key, an account the lab does not have, a preset that is not built in or whose hosts the lab
    does not resolve (its names must reach the lab's destination, never a public host)."""
    with open(scenario, "rb") as f:
        demo = tomllib.load(f).get("demo") or {}
    where = f"scenario {scenario}: [demo]"
    unknown = set(demo) - {"mail_provider"}
    if unknown:
        sys.exit(f"{where}: unknown key(s) {sorted(unknown)}")
    mail = demo.get("mail_provider")
    if mail is None:
        return None
    where += ".mail_provider"
    if not isinstance(mail, dict):
        sys.exit(f'{where}: must be a table {{ preset = "…", accounts = ["provider/account", …] }}')
    unknown = set(mail) - {"preset", "accounts"}
    if unknown:
        sys.exit(f"{where}: unknown key(s) {sorted(unknown)}")
    preset, accounts = mail.get("preset"), mail.get("accounts")
    with open(PRESETS_FILE, "rb") as f:
        presets = {p["name"]: p for p in tomllib.load(f).get("provider", [])}
    if preset not in presets:
        sys.exit(f"{where}.preset: {preset!r} is not a built-in preset ({', '.join(sorted(presets))})")
    names = set(lab["destination"]["names"])
    for key in ("smtp_host", "api_host"):
        if presets[preset][key] not in names:
            sys.exit(f"{where}.preset: {preset!r}: the lab does not resolve its {key} "
                     f"{presets[preset][key]} (lab/README.md, Names)")
    if not isinstance(accounts, list) or not accounts:
        sys.exit(f'{where}.accounts: a list of "provider/account"')
    known = {f"{h['provider']}/{h['account']}" for h in lab["hosts"]}
    for a in accounts:
        if a not in known:
            sys.exit(f"{where}.accounts: {a!r} is not an account of the lab ({', '.join(sorted(known))})")
    return preset, accounts


# The agents' probe interval and timeout (seconds): what settle_estimate counts with.
PROBE_INTERVAL_S = 3
PROBE_TIMEOUT_S = 3


def agent_configs(work: str, collector: str, scenario: str) -> None:
    """One certificate (issued by the collector's CA) and one config per simulated VM; the
    accounts the scenario's [demo] names also watch its mail provider."""
    with open(os.path.join(work, "lab.json")) as f:
        lab = json.load(f)
    mail = demo_mail_provider(scenario, lab)
    # Tests may give some hosts other labels (e.g. a hostile one): {"host": {"region": "..."}}.
    overrides = json.loads(os.environ.get("EGRESSWATCH_DEMO_LABELS") or "{}")
    for h in lab["hosts"]:
        name = h["name"]
        labels = {"provider": h["provider"], "account": h["account"], "region": "lab-1", "instance": name}
        labels.update(overrides.get(name, {}))
        subprocess.run([collector, "ca", "issue", "--dir", f"{work}/data/ca", name, "--out", f"{work}/agents"],
                       check=True, stdout=subprocess.DEVNULL)
        mail_target = ""
        if mail and f"{h['provider']}/{h['account']}" in mail[1]:
            mail_target = MAIL_TARGET_TOML.format(preset=json.dumps(mail[0]), interval=PROBE_INTERVAL_S)
        with open(f"{work}/agents/{name}.toml", "w") as f:
            f.write(AGENT_TOML.format(
                work=work, name=name, ca_file=lab["destination"]["ca_file"],
                interval=PROBE_INTERVAL_S, timeout=PROBE_TIMEOUT_S, mail_target=mail_target,
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


def join_ports(ports: list[str]) -> str:
    """`465 and 587`, `25, 465 and 587`."""
    return ports[0] if len(ports) == 1 else f"{', '.join(ports[:-1])} and {ports[-1]}"


def mail_line(row: dict) -> str:
    """One row of /api/mail-providers in the words of the page's "Mail provider × account"
    section (dashboard/mail.js, mailRows): the SMTP verdict, each port, and the API."""
    smtp = row.get("smtp") or {}
    ports = sorted(smtp, key=int)
    open_ports = [str(p) for p in row.get("smtp_open_ports") or []]
    if open_ports:
        verdict = f"SMTP works over {join_ports(open_ports)}"
    elif ports and all(smtp[p].get("status") == "blocked" for p in ports):
        verdict = "SMTP blocked"
    elif ports:
        verdict = "SMTP partly"
    else:
        verdict = "SMTP not probed"
    cells = " · ".join(f"{p} {smtp[p].get('status')}" for p in ports)
    api = row.get("api")
    if not api:
        api_words = "not probed"
    elif row.get("api_reachable"):
        api_words = "answers" if open_ports else "answers: the way out"
    else:
        api_words = ("answers from some agents" if api.get("status") == "partial"
                     else "unreachable: no way out" if verdict == "SMTP blocked" else "unreachable")
    agents = row.get("agents", 0)
    return (f"  {row.get('title')}  {row.get('provider')} / {row.get('account')} "
            f"({agents} agent{'' if agents == 1 else 's'}): {verdict} ({cells}); API {api_words}")


def mail_settled(view: dict, expected: dict[str, int], ports: int) -> bool:
    """Every expected `provider/account` has a row in which each of its `expected` agents has
    reported every SMTP port and the API over both families."""
    rows = view.get("rows") or []
    for account, agents in expected.items():
        provider, name = account.split("/", 1)
        # The collector names a provider by its own key (`do` is `digitalocean`): an account's
        # row is the one with its provider label, else the only one with its name.
        same = [r for r in rows if r.get("account") == name]
        exact = [r for r in same if r.get("provider") == provider]
        r = (exact or same or [None])[0] if len(exact) == 1 or len(same) == 1 else None
        if not r or r.get("agents") != agents or len(r.get("smtp") or {}) < ports or not r.get("api"):
            return False
        cells = list((r.get("smtp") or {}).values()) + [r["api"]]
        if any(c.get("ok", 0) + c.get("failed", 0) < 2 * agents for c in cells):
            return False
    return True


def wait_settled(http: str, agents: str, confirm_probes: str, scenario: str = "", lab_json: str = "") -> None:
    """Says when the matrix should have settled, then polls /api/matrix (bounded) and prints it
    once every agent has reported every port; then, when the scenario's agents watch a mail
    provider, polls /api/mail-providers the same way and prints its rows as the page words them."""
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
            break
        time.sleep(1)
    else:
        print(f"MATRIX not settled after {time.monotonic() - started:.0f} s (see the page)", flush=True)
        return
    if not scenario or not lab_json:
        return
    with open(lab_json) as f:
        lab = json.load(f)
    mail = demo_mail_provider(scenario, lab)
    if not mail:
        return
    preset, accounts = mail
    expected = {a: sum(1 for h in lab["hosts"] if f"{h['provider']}/{h['account']}" == a) for a in accounts}
    with open(PRESETS_FILE, "rb") as f:
        ports = next(len(p["ports"]) for p in tomllib.load(f)["provider"] if p["name"] == preset)
    while time.monotonic() < deadline:
        try:
            with direct.open(f"http://{http}/api/mail-providers", timeout=2) as resp:
                view = json.load(resp)
        except (OSError, ValueError):
            view = {}
        if view and mail_settled(view, expected, ports):
            print(f"MAIL {preset} as the page's \"Mail provider × account\" section shows it:", flush=True)
            for row in view.get("rows") or []:
                print(mail_line(row), flush=True)
            return
        time.sleep(1)
    print(f"MAIL not settled after {time.monotonic() - started:.0f} s (see the page)", flush=True)


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
