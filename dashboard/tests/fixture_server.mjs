// A stand-in for the collector's HTTP server, for the browser tests and the benchmark: it serves
// the three page files with the collector's exact CSP, fixture JSON for the API in the
// collector's shapes, and an SSE stream onto which a test can push a matrix or an event.
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DASHBOARD = path.resolve(HERE, '..');

// Kept identical to collector/src/http/routes.rs `CSP`.
export const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

export const HOSTILE = '<img src=x onerror=alert(1)>';
export const PORTS = [25, 465, 587, 2525, 443];
export const CONTROL_PORT = 443;

const T0 = Date.parse('2026-11-22T12:00:00Z');
const iso = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

export function cell(status, ok, failed, extra = {}) {
  return {
    status,
    ok,
    failed,
    outcome: status === 'unknown' ? null : failed > ok ? 'timeout' : 'ok',
    p50_connect_ms: ok > 0 ? 12.5 : null,
    since: status === 'unknown' ? null : iso(T0),
    ...extra,
  };
}

/**
 * The cells as the collector serves them in one family's view: in the both-families view
 * (`all`) a cell whose families differ has `families` (`split`, per port: { 25: { ipv4, ipv6 } });
 * the others say the same in both families and carry none.
 */
function inView(family, cells, split = {}) {
  if (family !== 'all') return cells;
  const out = {};
  for (const [port, c] of Object.entries(cells)) {
    out[port] = split[port] ? { ...c, families: split[port] } : c;
  }
  return out;
}

function doc(policy, summary) {
  return {
    policy,
    summary,
    source: 'https://example.test/docs/smtp',
    read: null,
    for_whom: 'all accounts',
    unblock: 'ask support',
    basis: 'provider documentation',
  };
}

function withDoc(cells, docs) {
  const out = {};
  for (const [port, c] of Object.entries(cells)) {
    const d = docs[port] ?? null;
    const mismatch = !!d && ((d.policy === 'blocked' && c.status === 'open') || (d.policy === 'open' && c.status === 'blocked'));
    out[port] = { ...c, doc: d, doc_mismatch: mismatch };
  }
  return out;
}

/** The small hand-made fleet the tests assert on. */
export function smallFixture(family = 'all') {
  const both = family === 'all';
  const gcpAgents = both ? 12 : 6;
  const gcpCells = inView(family, {
    25: cell('blocked', 0, gcpAgents),
    465: cell('open', gcpAgents, 0),
    587: cell('partial', gcpAgents - 1, 1),
    2525: cell('open', gcpAgents, 0),
    443: cell('open', gcpAgents, 0),
  });
  const agentCells = inView(family, {
    25: cell('blocked', 0, 1),
    465: cell('open', 1, 0),
    587: cell('open', 1, 0),
    2525: cell('open', 1, 0),
    443: cell('open', 1, 0),
  });
  const hetznerCells = inView(family, {
    25: cell('open', 3, 0),
    465: cell('blocked', 0, 3),
    587: cell('open', 3, 0),
    2525: cell('unknown', 0, 0),
    443: cell('open', 3, 0),
  });
  // vultr's agents time out on 25 over IPv4 and connect over IPv6: blocked in the IPv4 view,
  // open in the IPv6 view, and in the both-families view partial with IPv4 named (no agent
  // is open in every family).
  const vultrCells = (n) => inView(
    family,
    {
      25: family === 'ipv4' ? cell('blocked', 0, n) : family === 'ipv6' ? cell('open', n, 0) : { ...cell('partial', 0, n), outcome: 'timeout' },
      465: cell('open', n, 0),
      587: cell('open', n, 0),
      2525: cell('open', n, 0),
      443: cell('open', n, 0),
    },
    { 25: { ipv4: 'blocked', ipv6: 'open' } },
  );
  const agent = (id, instance, region, silent = false) => ({
    agent: id,
    instance,
    region,
    last_seen: iso(T0 + 3600_000),
    silent,
    cells: agentCells,
  });
  return {
    ports: PORTS,
    control_port: CONTROL_PORT,
    family,
    generated_at: iso(T0 + 3600_000),
    providers: [
      {
        provider: 'gcp',
        agents: gcpAgents,
        cells: withDoc(gcpCells, { 25: doc('blocked', 'Port 25 is blocked for all VMs.'), 465: doc('open', 'Allowed.'), 587: doc('open', 'Allowed.') }),
        accounts: [
          {
            account: 'acct-a',
            agents: gcpAgents,
            cells: gcpCells,
            regions: [
              {
                region: 'europe-west1',
                agents: 2,
                cells: gcpCells,
                agent_list: [agent('gcp-a-1', 'vm-1', 'europe-west1'), agent('gcp-a-2', 'vm-2', 'europe-west1', true)],
              },
            ],
          },
        ],
      },
      {
        provider: 'hetzner',
        agents: 3,
        // hetzner documents 25 blocked, but agents see it open: a "≠ docs" marker.
        cells: withDoc(hetznerCells, { 25: doc('blocked', 'Blocked on new cloud servers.'), 465: doc('blocked', 'Blocked on new cloud servers.') }),
        accounts: [
          {
            account: HOSTILE,
            agents: 3,
            cells: hetznerCells,
            regions: [
              {
                region: 'fsn1',
                agents: 1,
                cells: hetznerCells,
                agent_list: [agent('hz-1', HOSTILE, 'fsn1')],
              },
            ],
          },
        ],
      },
      {
        provider: 'vultr',
        agents: 2,
        cells: withDoc(vultrCells(2), {}),
        accounts: [
          {
            account: 'v-acct',
            agents: 2,
            cells: vultrCells(2),
            regions: [
              {
                region: 'ams',
                agents: 2,
                cells: vultrCells(2),
                agent_list: ['v-1', 'v-2'].map((id) => ({ ...agent(id, `vm-${id}`, 'ams'), cells: vultrCells(1) })),
              },
            ],
          },
        ],
      },
    ],
  };
}

export function smallEvents() {
  return [
    {
      kind: 'policy_changed', scope: 'account', provider: 'gcp', account: 'acct-a', agent: null,
      target: 'mx.lab.test', port: 587, from: 'open', to: 'blocked', at: iso(T0 + 1800_000), id: 2, outcome: 'timeout',
    },
    {
      kind: 'agent_silent', scope: 'agent', provider: 'hetzner', account: HOSTILE, agent: 'hz-1',
      target: null, port: null, from: 'reporting', to: 'silent', at: iso(T0 + 600_000), id: 1,
    },
  ];
}

export function smallResults(agentId) {
  const out = [];
  for (let i = 0; i < 10; i++) {
    const port = PORTS[i % PORTS.length];
    const blocked = port === 25;
    out.push({
      seq: 100 - i,
      at: iso(T0 + 3600_000 - i * 60_000),
      target: 'mx.lab.test',
      port,
      family: i % 2 ? 'ipv6' : 'ipv4',
      address: i % 2 ? '2001:db8::25' : '198.18.0.25',
      level: 'banner',
      outcome: blocked ? 'timeout' : 'ok',
      dns_ms: 0.4,
      connect_ms: blocked ? null : 11.2,
      banner_ms: blocked ? null : 30.1,
      tls_ms: null,
      syn_retransmits: blocked ? 2 : 0,
      detail: agentId === 'hz-1' ? HOSTILE : blocked ? 'no answer to SYN in 5s' : '220 mx.lab.test ESMTP',
    });
  }
  return out;
}

/** A synthetic fleet: `providers` × `accountsPer` accounts × `agentsPer` agents (for the bench). */
export function bigFixture({ providers = 50, accountsPer = 10, agentsPer = 10, flip = -1 } = {}) {
  const statuses = ['open', 'blocked', 'partial', 'unknown'];
  const mk = (seed, n) => {
    const cells = {};
    PORTS.forEach((port, j) => {
      const s = statuses[(seed + j) % 4];
      cells[port] = cell(s, s === 'open' ? n : s === 'partial' ? n - 1 : 0, s === 'blocked' ? n : s === 'partial' ? 1 : 0);
    });
    return cells;
  };
  const list = [];
  for (let p = 0; p < providers; p++) {
    const accounts = [];
    for (let a = 0; a < accountsPer; a++) {
      const agents = [];
      for (let g = 0; g < agentsPer; g++) {
        agents.push({
          agent: `agent-${p}-${a}-${g}`, instance: `i-${p}-${a}-${g}`, region: `region-${g % 3}`,
          last_seen: iso(T0), silent: false, cells: mk(p + a + g, 1),
        });
      }
      const regions = [0, 1, 2].map((r) => ({
        region: `region-${r}`,
        agents: agents.filter((x) => x.region === `region-${r}`).length,
        cells: mk(p + a + r, agentsPer),
        agent_list: agents.filter((x) => x.region === `region-${r}`),
      }));
      accounts.push({ account: `account-${p}-${a}`, agents: agentsPer, cells: mk(p + a, agentsPer), regions });
    }
    const cells = mk(p === flip ? p + 1 : p, accountsPer * agentsPer);
    list.push({
      provider: `provider-${String(p).padStart(2, '0')}`,
      agents: accountsPer * agentsPer,
      cells: withDoc(cells, { 25: doc('blocked', 'blocked'), 587: doc('open', 'open') }),
      accounts,
    });
  }
  return { ports: PORTS, control_port: CONTROL_PORT, family: 'all', generated_at: iso(T0), providers: list };
}

// ---------- history (shapes of /api/history and /api/intervals, as agreed for the collector) ----------

const HISTORY_KEYS = ['provider', 'account', 'agent', 'target', 'port', 'family', 'from', 'to', 'step', 'format'];
const INTERVALS_KEYS = ['provider', 'account', 'agent', 'target', 'port', 'family', 'from', 'to', 'limit', 'format'];
const HOUR = 3600_000;

function parseWhen(name, v, fallback) {
  if (v === null) return [fallback, null];
  const t = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(t)) return [null, `${name}: not RFC 3339 or Unix milliseconds: ${v}`];
  return [t, null];
}

/** The selection and range of a history or intervals query, or [status, { error }] as the API answers. */
export function parseHistoryQuery(q, keys, now = Date.now()) {
  for (const k of q.keys()) if (!keys.includes(k)) return [400, { error: `unknown parameter ${k}` }];
  if (!q.get('provider') && !q.get('agent')) return [400, { error: 'provider: needed (or agent)' }];
  const [to, e1] = parseWhen('to', q.get('to'), now);
  if (e1) return [400, { error: e1 }];
  const [from, e2] = parseWhen('from', q.get('from'), to - 24 * HOUR);
  if (e2) return [400, { error: e2 }];
  if (to <= from) return [400, { error: 'to: must be after from' }];
  if (to - from > 400 * 24 * HOUR) return [400, { error: 'from: the range is over 400 days' }];
  const port = q.get('port') === null ? null : Number(q.get('port'));
  if (port !== null && !(Number.isInteger(port) && port >= 1 && port <= 65535)) return [400, { error: 'port: 1..65535' }];
  const family = q.get('family');
  if (family !== null && family !== 'ipv4' && family !== 'ipv6') return [400, { error: 'family: ipv4 or ipv6' }];
  const sel = {
    provider: q.get('provider'), account: q.get('account'), agent: q.get('agent'),
    target: q.get('target'), port, family,
  };
  return [200, { sel, from, to }];
}

/**
 * The fixture's one closed span: gcp's 587, seen by agent gcp-a-1, timed out from 10 h to 4 h
 * before the current hour began. Everything else was open; hetzner's 25, documented blocked,
 * has been open for 3 days (observation disagrees with the docs).
 */
export function closedSpan(now = Date.now()) {
  const hour = Math.floor(now / HOUR) * HOUR;
  return { start: hour - 10 * HOUR, end: hour - 4 * HOUR };
}

const isClosing = (sel) => sel.provider === 'gcp' && sel.port === 587 && (!sel.agent || sel.agent === 'gcp-a-1') && sel.family !== 'ipv6';

export function smallHistory(q, now = Date.now()) {
  const [status, parsed] = parseHistoryQuery(q, HISTORY_KEYS, now);
  if (status !== 200) return [status, parsed];
  const { sel, from, to } = parsed;
  const stepText = q.get('step');
  let step = to - from > 20 * 24 * HOUR ? 24 * HOUR : HOUR;
  if (stepText !== null) {
    const m = /^(\d+)(h|d)?$/.exec(stepText);
    if (!m) return [400, { error: `step: not 1h, 1d or seconds: ${stepText}` }];
    step = Number(m[1]) * (m[2] === 'h' ? HOUR : m[2] === 'd' ? 24 * HOUR : 1000);
    if (!(step > 0)) return [400, { error: 'step: must be positive' }];
  }
  if ((to - from) / step > 1000) return [400, { error: 'step: more than 1000 buckets' }];
  const span = closedSpan(now);
  const buckets = [];
  for (let t = Math.floor(from / step) * step; t < to; t += step) {
    const closed = isClosing(sel) && t < span.end && t + step > span.start;
    const fullyClosed = closed && t >= span.start && t + step <= span.end;
    const probes = step / 60_000;
    const failed = closed ? (fullyClosed ? probes : Math.round(probes * (Math.min(t + step, span.end) - Math.max(t, span.start)) / step)) : 0;
    const ok = probes - failed;
    buckets.push({
      start: iso(t),
      status: failed === 0 ? 'open' : ok === 0 ? 'blocked' : 'partial',
      probes, ok, failed,
      outcomes: failed ? (ok ? { ok, timeout: failed } : { timeout: failed }) : { ok },
      p50_connect_ms: ok ? 12 + ((t / HOUR) % 5) : null,
      p95_connect_ms: ok ? 30 + ((t / HOUR) % 7) : null,
    });
  }
  return [200, {
    from: iso(from), to: iso(to), step_secs: step / 1000,
    selector: { provider: sel.provider, account: sel.account, agent: sel.agent, target: sel.target, port: sel.port, family: sel.family },
    buckets,
  }];
}

export function smallIntervals(q, now = Date.now()) {
  const [status, parsed] = parseHistoryQuery(q, INTERVALS_KEYS, now);
  if (status !== 200) return [status, parsed];
  const { sel, from, to } = parsed;
  const limit = q.get('limit') === null ? 200 : Number(q.get('limit'));
  if (!(Number.isInteger(limit) && limit >= 1 && limit <= 1000)) return [400, { error: 'limit: 1..1000' }];
  const span = closedSpan(now);
  const agent = sel.agent ?? (sel.provider === 'hetzner' ? 'hz-1' : sel.provider === 'vultr' ? 'v-1' : 'gcp-a-1');
  const base = {
    agent, provider: sel.provider, account: sel.account ?? (sel.provider === 'gcp' ? 'acct-a' : 'v-acct'),
    target: 'mx.lab.test', port: sel.port ?? 587, family: sel.family ?? 'ipv4',
  };
  const open = (first, last) => ({
    ...base, outcome: 'ok', status: 'open', first_seen: iso(first), last_seen: iso(last),
    probes: Math.round((last - first) / 60_000) + 1, p50_connect_ms: 12.4, p95_connect_ms: 30.1,
  });
  let list;
  if (isClosing(sel)) {
    list = [
      open(span.end, now),
      { ...base, outcome: 'timeout', status: 'blocked', first_seen: iso(span.start), last_seen: iso(span.end - 60_000),
        probes: 360, p50_connect_ms: null, p95_connect_ms: null },
      open(now - 30 * 24 * HOUR, span.start - 60_000),
    ];
  } else if (sel.provider === 'hetzner' && sel.port === 25) {
    list = [open(now - 3 * 24 * HOUR, now)];
  } else {
    list = [open(now - 30 * 24 * HOUR, now)];
  }
  const inRange = list.filter((iv) => Date.parse(iv.last_seen) >= from && Date.parse(iv.first_seen) < to).slice(0, limit);
  return [200, { intervals: inRange }];
}

/** Events on the current time axis: gcp's 587 closing and opening again (see closedSpan). */
export function historyEvents(now = Date.now()) {
  const span = closedSpan(now);
  return [
    {
      kind: 'policy_changed', scope: 'agent', provider: 'gcp', account: 'acct-a', agent: 'gcp-a-1', target: 'mx.lab.test',
      port: 587, from: 'blocked', to: 'open', at: iso(span.end + 60_000), family: null, id: 11,
    },
    {
      kind: 'policy_changed', scope: 'agent', provider: 'gcp', account: 'acct-a', agent: 'gcp-a-1', target: 'mx.lab.test',
      port: 587, from: 'open', to: 'blocked', at: iso(span.start + 5 * 60_000), family: null, id: 10, outcome: 'timeout',
    },
    ...smallEvents(),
  ];
}

/**
 * Starts the server on 127.0.0.1 (a free port). `data` holds `matrix(family)`, `events()`,
 * `results(agentId)`, `history(searchParams)` and `intervals(searchParams)` (these two return
 * [status, body]) and `mailProviders()`; replace them at any time. Returns { url, push(type, obj), close(), data }.
 */
export async function startFixtureServer(data = {}) {
  const d = {
    matrix: data.matrix ?? smallFixture,
    events: data.events ?? smallEvents,
    results: data.results ?? smallResults,
    silencesUpstream: data.silencesUpstream ?? null,
    history: data.history ?? smallHistory,
    intervals: data.intervals ?? smallIntervals,
    mailProviders: data.mailProviders ?? (() => ({ generated_at: '2026-11-22T12:00:00Z', rows: [] })),
  };
  const files = {
    '/': ['index.html', 'text/html; charset=utf-8'],
    '/style.css': ['style.css', 'text/css; charset=utf-8'],
    '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
    '/silences.js': ['silences.js', 'text/javascript; charset=utf-8'],
    '/history.js': ['history.js', 'text/javascript; charset=utf-8'],
    '/mail.js': ['mail.js', 'text/javascript; charset=utf-8'],
    '/vendor/uPlot.iife.min.js': ['vendor/uPlot.iife.min.js', 'text/javascript; charset=utf-8'],
    '/vendor/uPlot.min.css': ['vendor/uPlot.min.css', 'text/css; charset=utf-8'],
  };
  const requests = [];
  const clients = new Set();
  const headers = (type) => ({
    'content-type': type,
    'content-security-policy': CSP,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'x-frame-options': 'DENY',
  });
  const json = (res, status, body) => {
    res.writeHead(status, headers('application/json'));
    res.end(typeof body === 'string' ? body : JSON.stringify(body));
  };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    requests.push(url.pathname + url.search);
    try {
      if (files[url.pathname]) {
        const [name, type] = files[url.pathname];
        const body = await readFile(path.join(DASHBOARD, name));
        res.writeHead(200, headers(type));
        res.end(body);
      } else if (url.pathname === '/api/matrix') {
        const fam = url.searchParams.get('family') || 'all';
        if (!['all', 'ipv4', 'ipv6'].includes(fam)) return json(res, 400, { error: 'unknown family' });
        json(res, 200, d.matrix(fam));
      } else if (url.pathname === '/api/mail-providers') {
        json(res, 200, d.mailProviders());
      } else if (url.pathname === '/api/events') {
        json(res, 200, d.events());
      } else if (url.pathname.startsWith('/api/agents/') && url.pathname.endsWith('/results')) {
        const id = decodeURIComponent(url.pathname.slice('/api/agents/'.length, -'/results'.length));
        json(res, 200, d.results(id));
      } else if (url.pathname === '/api/history' || url.pathname === '/api/intervals') {
        const [status, body] = await (url.pathname === '/api/history' ? d.history : d.intervals)(url.searchParams);
        json(res, status, body);
      } else if (url.pathname === '/api/stream') {
        res.writeHead(200, { ...headers('text/event-stream'), 'cache-control': 'no-cache', connection: 'keep-alive' });
        res.write(`event: matrix\ndata: ${JSON.stringify(d.matrix('all'))}\n\n`);
        clients.add(res);
        req.on('close', () => clients.delete(res));
      } else if (url.pathname === '/api/silences' || url.pathname.startsWith('/api/silences/')) {
        // Silences are the real collector's when `silencesUpstream` names one; else none.
        if (!d.silencesUpstream) return json(res, req.method === 'GET' ? 200 : 404, req.method === 'GET' ? [] : { error: 'no silences here' });
        const chunks = [];
        for await (const c of req) chunks.push(c);
        const up = await fetch(d.silencesUpstream + url.pathname + url.search, {
          method: req.method,
          headers: req.headers['content-type'] ? { 'content-type': req.headers['content-type'] } : {},
          body: chunks.length ? Buffer.concat(chunks) : undefined,
        });
        json(res, up.status, await up.text());
      } else if (url.pathname === '/session') {
        // As the collector answers with no http.token configured.
        json(res, 200, { token_required: false, signed_in: true });
      } else if (url.pathname === '/healthz') {
        res.writeHead(200, headers('text/plain'));
        res.end('ok');
      } else {
        json(res, 404, { error: 'no such page' });
      }
    } catch (e) {
      json(res, 500, { error: String(e) });
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    data: d,
    /** Every path and query asked for, in order. */
    requests,
    clientCount: () => clients.size,
    /** Sends one SSE message (`matrix` or `event`) to every connected page. */
    push(type, obj) {
      const text = typeof obj === 'string' ? obj : JSON.stringify(obj);
      for (const c of clients) c.write(`event: ${type}\ndata: ${text}\n\n`);
    },
    /** Ends every open stream, as the collector does when it shuts down for a restart. */
    dropStreams() {
      for (const c of clients) c.end();
      clients.clear();
    },
    close() {
      for (const c of clients) c.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

// Run directly: serve the small fixture for a look in a browser.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const s = await startFixtureServer();
  console.log(`fixture server at ${s.url}`);
}
