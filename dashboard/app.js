// egresswatch matrix page: one ES module, no framework, no build step.
//
// Everything that came from an agent (labels, details, outcomes) is put into the page with
// textContent / createElement only, never as HTML. Rows are keyed and updated in place: provider
// rows are built first, account/region/agent rows only when their parent is expanded.

import { el, initHistory, historyButton, sourceLine } from './history.js';
import { renderMail } from './mail.js';

const STATUS = {
  open: { sym: '✓', word: 'open' },
  blocked: { sym: '✕', word: 'blocked' },
  partial: { sym: '◐', word: 'partial' },
  unknown: { sym: '?', word: 'unknown' },
};
const FAMILY_WORD = { ipv4: 'IPv4', ipv6: 'IPv6' };
const STALE_AFTER_MS = 30_000;
const HIGHLIGHT_MS = 8_000;
const EVENT_LIMIT = 200;

const state = {
  family: 'all',
  // Both come from /api/matrix: its `ports`, and its `control_port` (the column set apart).
  ports: [],
  controlPort: null,
  matrix: null,
  expanded: new Set(), // row keys
  rows: new Map(), // key -> row record
  probes: new Map(), // agent id -> { loading, results, error }
  lastMessageAt: 0,
  connected: false,
  events: [],
  fetchedAt: -Infinity,
};

const $ = (id) => document.getElementById(id);


// ---------- formatting ----------

function fmtMs(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  if (v < 10) return `${v.toFixed(1)} ms`;
  return `${Math.round(v)} ms`;
}

function fmtHeld(since, now) {
  if (!since) return '';
  const t = Date.parse(since);
  if (Number.isNaN(t)) return '';
  let s = Math.max(0, Math.floor((now - t) / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d`;
}

function fmtClock(ms) {
  const d = new Date(ms);
  return d.toTimeString().slice(0, 8);
}

function fmtTime(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso ?? '');
  const d = new Date(t);
  return `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 19)}Z`;
}

// ---------- keys ----------

const keyOf = {
  provider: (p) => `p\u0000${p}`,
  account: (p, a) => `a\u0000${p}\u0000${a}`,
  region: (p, a, r) => `r\u0000${p}\u0000${a}\u0000${r}`,
  agent: (id) => `g\u0000${id}`,
  probes: (id) => `q\u0000${id}`,
};

// ---------- header ----------

function renderHead() {
  const head = $('matrix-head');
  while (head.children.length > 1) head.lastChild.remove();
  for (const port of state.ports) {
    const control = port === state.controlPort;
    const th = el('th', control ? 'port control' : 'port');
    th.scope = 'col';
    th.dataset.port = port;
    th.append(el('span', 'port-num', port));
    if (control) th.append(el('span', 'port-note', 'control'));
    head.append(th);
  }
}

// ---------- cells ----------

function cellSignature(c, held) {
  if (!c) return 'none';
  return [
    c.status, c.ok, c.failed, c.outcome, c.p50_connect_ms, c.since, held,
    c.families ? JSON.stringify(c.families) : '',
    c.doc_mismatch, c.doc ? JSON.stringify(c.doc) : '',
    c.elsewhere ? JSON.stringify(c.elsewhere) : '', c.elsewhere_disagrees, c.elsewhere_note ?? '',
  ].join('|');
}

// In the both-families view a cell is partial where the families disagree: name the families
// that are not open ("IPv4 blocked"), so a block over one family is never hidden by the other.
function familyNote(c) {
  const f = c.families;
  if (!f || typeof f !== 'object' || c.status !== 'partial' || f.ipv4 === f.ipv6) return '';
  // A family without fresh results is no evidence: the other family's partial is its own.
  if (f.ipv4 === 'unknown' || f.ipv6 === 'unknown') return '';
  const parts = [];
  for (const fam of ['ipv4', 'ipv6']) {
    if (f[fam] === 'blocked') parts.push(`${FAMILY_WORD[fam]} blocked`);
    else if (f[fam] === 'partial') parts.push(`${FAMILY_WORD[fam]} partly blocked`);
  }
  return parts.join(', ');
}

function familiesTitle(f) {
  if (!f || typeof f !== 'object') return '';
  return ['ipv4', 'ipv6'].map((fam) => `${FAMILY_WORD[fam]}: ${String(f[fam] ?? 'unknown')}`).join(' · ');
}

function buildDoc(doc) {
  const d = el('details', 'doc');
  d.append(el('summary', null, `docs: ${doc.policy}`));
  const dl = el('dl');
  const add = (k, v) => {
    if (v === null || v === undefined || v === '') return;
    dl.append(el('dt', null, k), el('dd', null, v));
  };
  add('policy', doc.policy);
  add('summary', doc.summary);
  add('for whom', doc.for_whom);
  add('unblock', doc.unblock);
  add('basis', doc.basis);
  add('read', doc.read);
  const bodyEl = el('div', 'doc-body');
  bodyEl.append(dl);
  d.append(bodyEl);
  if (doc.source) bodyEl.append(sourceLine(doc.source, 'doc-source'));
  return d;
}

// What imported feeds observed of this provider × port (/api/matrix `elsewhere`, docs/feed.md):
// one line per feed — its status, how many accounts, the feed's name — with its provenance (key,
// snapshot date, since when) in the title.
function buildElsewhere(list) {
  const box = el('div', 'elsewhere');
  for (const o of list) {
    if (!o || typeof o !== 'object') continue;
    const status = STATUS[o.status] ? o.status : 'unknown';
    const line = el('div', `elsewhere-line st-${status}`);
    line.dataset.feed = String(o.feed ?? '');
    line.dataset.status = status;
    const accounts = Number.isFinite(o.accounts) ? o.accounts : 0;
    line.append(
      el('span', 'elsewhere-label', 'elsewhere:'), ' ',
      el('span', 'sym', STATUS[status].sym), ' ', el('span', 'word', STATUS[status].word), ' ',
      el('span', 'elsewhere-who', `${accounts} account${accounts === 1 ? '' : 's'} · ${String(o.feed ?? '')}`),
    );
    const since = o.since ? `, ${status} since ${o.since}` : '';
    line.title = `feed ${String(o.feed ?? '')}: snapshot of ${String(o.snapshot_at ?? '?')}, key ${String(o.key_id ?? '?')}${since}`;
    box.append(line);
  }
  return box;
}

function fillCell(td, c, now, history) {
  const held = c ? fmtHeld(c.since, now) : '';
  const sig = cellSignature(c, held);
  if (td.dataset.sig === sig) return;
  td.dataset.sig = sig;
  const status = c && STATUS[c.status] ? c.status : 'unknown';
  td.className = td.className.replace(/\bst-\w+/g, '').trim() + ` cell st-${status}`;
  td.dataset.status = status;
  td.replaceChildren();
  if (!c) {
    td.append(el('span', 'sym', STATUS.unknown.sym), ' ', el('span', 'word', 'no data'));
    return;
  }
  if (c.status === undefined) {
    // A provider only imported feeds observed: this fleet has nothing to say about it.
    td.append(el('div', 'cell-main not-here', 'not observed here'));
    if (c.doc) td.append(buildDoc(c.doc));
    if (Array.isArray(c.elsewhere) && c.elsewhere.length) td.append(buildElsewhere(c.elsewhere));
    if (c.elsewhere_disagrees) {
      const m = el('span', 'mismatch elsewhere-mismatch', '≠ elsewhere');
      m.title = String(c.elsewhere_note ?? 'an imported feed observed otherwise');
      td.append(m);
    }
    return;
  }
  const line = el('div', 'cell-main');
  line.append(el('span', 'sym', STATUS[status].sym), ' ', el('span', 'word', STATUS[status].word));
  const note = familyNote(c);
  if (note) line.append(' ', el('span', 'fam-note', `— ${note}`));
  if (c.families) line.title = familiesTitle(c.families);
  td.append(line);
  const total = (c.ok ?? 0) + (c.failed ?? 0);
  const meta = el('div', 'cell-meta');
  const count = el('span', 'count', `${c.ok ?? 0}/${total}`);
  count.title = `${c.ok ?? 0} of ${total} agents open`;
  meta.append(count, ' ', el('span', 'p50', fmtMs(c.p50_connect_ms)));
  td.append(meta);
  const meta2 = el('div', 'cell-meta');
  if (held) {
    const h = el('span', 'held', `for ${held}`);
    h.title = `status held since ${c.since}`;
    meta2.append(h);
  }
  if (c.outcome && c.outcome !== 'ok' && status !== 'open') meta2.append(' ', el('span', 'outcome', c.outcome));
  if (meta2.childNodes.length) td.append(meta2);
  if (c.doc_mismatch) {
    const m = el('span', 'mismatch', '≠ docs');
    m.title = 'observation disagrees with the documented policy';
    td.append(m);
  }
  if (c.doc) td.append(buildDoc(c.doc));
  if (Array.isArray(c.elsewhere) && c.elsewhere.length) {
    td.append(buildElsewhere(c.elsewhere));
    if (c.elsewhere_disagrees) {
      const m = el('span', 'mismatch elsewhere-mismatch', '≠ elsewhere');
      m.title = String(c.elsewhere_note ?? 'an imported feed observed otherwise');
      td.append(m);
    }
  }
  if (history) td.append(historyButton({ ...history, port: Number(td.dataset.port) }));
}

// ---------- rows ----------

function makeRow(key, level, label, sub, expandable) {
  const tr = el('tr', `row lvl-${level}`);
  tr.dataset.key = key;
  const th = el('th', 'name');
  th.scope = 'row';
  let button = null;
  if (expandable) {
    button = el('button', 'expander');
    button.type = 'button';
    button.setAttribute('aria-expanded', 'false');
    button.append(el('span', 'chev', '▸'), ' ', el('span', 'label', label));
    button.addEventListener('click', () => toggle(key));
    th.append(button);
  } else {
    th.append(el('span', 'label', label));
  }
  const subEl = el('span', 'sub', sub);
  th.append(subEl);
  tr.append(th);
  const cells = new Map();
  for (const port of state.ports) {
    const td = el('td', port === state.controlPort ? 'control' : '');
    td.dataset.port = port;
    tr.append(td);
    cells.set(port, td);
  }
  const rec = { key, tr, button, subEl, cells, sub };
  state.rows.set(key, rec);
  return rec;
}

function updateRow(rec, data, sub, now) {
  if (rec.sub !== sub) {
    rec.sub = sub;
    rec.subEl.textContent = sub;
  }
  if (rec.button) {
    const open = state.expanded.has(rec.key);
    if (rec.button.getAttribute('aria-expanded') !== String(open)) {
      rec.button.setAttribute('aria-expanded', String(open));
      rec.button.firstChild.textContent = open ? '▾' : '▸';
    }
  }
  const cells = data.cells || {};
  for (const [port, td] of rec.cells) fillCell(td, cells[port], now, rec.history);
}

function getRow(key, level, label, sub, expandable) {
  return state.rows.get(key) || makeRow(key, level, label, sub, expandable);
}

function agentsWord(n) {
  return `${n} agent${n === 1 ? '' : 's'}`;
}

// Builds the ordered list of visible rows, creating rows on demand and updating them in place.
function visibleRows(now) {
  const out = [];
  const m = state.matrix;
  if (!m) return out;
  for (const p of m.providers || []) {
    const pk = keyOf.provider(p.provider);
    const pr = getRow(pk, 0, p.provider, '', true);
    pr.history ??= { provider: p.provider };
    updateRow(pr, p, agentsWord(p.agents), now);
    out.push(pr);
    if (!state.expanded.has(pk)) continue;
    for (const a of p.accounts || []) {
      const ak = keyOf.account(p.provider, a.account);
      const ar = getRow(ak, 1, a.account, '', true);
      ar.history ??= { provider: p.provider, account: a.account };
      updateRow(ar, a, `account · ${agentsWord(a.agents)}`, now);
      out.push(ar);
      if (!state.expanded.has(ak)) continue;
      for (const r of a.regions || []) {
        const rk = keyOf.region(p.provider, a.account, r.region);
        const rr = getRow(rk, 2, r.region, '', true);
        updateRow(rr, r, `region · ${agentsWord(r.agents)}`, now);
        out.push(rr);
        if (!state.expanded.has(rk)) continue;
        for (const g of r.agent_list || []) {
          const gk = keyOf.agent(g.agent);
          const gr = getRow(gk, 3, g.agent, '', true);
          gr.history ??= { provider: p.provider, account: a.account, agent: g.agent };
          const seen = g.silent ? `silent · last seen ${fmtHeld(g.last_seen, now)} ago` : `seen ${fmtHeld(g.last_seen, now)} ago`;
          updateRow(gr, g, `${g.instance ? g.instance + ' · ' : ''}${seen}`, now);
          gr.tr.classList.toggle('silent', !!g.silent);
          out.push(gr);
          if (state.expanded.has(gk)) out.push(probesRow(g.agent));
        }
      }
    }
  }
  // Providers only imported feeds observed: no status of this fleet, only what the feeds saw.
  for (const p of m.imported_providers || []) {
    if (!p || typeof p.provider !== 'string') continue;
    const ir = getRow(`i\u0000${p.provider}`, 0, p.provider, '', false);
    ir.tr.classList.add('imported');
    updateRow(ir, p, 'observed elsewhere only', now);
    out.push(ir);
  }
  return out;
}

function render() {
  const now = Date.now();
  const body = $('matrix-body');
  const wanted = visibleRows(now);
  const wantedKeys = new Set(wanted.map((r) => r.key));
  // Drop rows no longer visible (and forget them, so hidden subtrees cost nothing).
  for (const [key, rec] of state.rows) {
    if (!wantedKeys.has(key)) {
      rec.tr.remove();
      state.rows.delete(key);
    }
  }
  // Put rows in order with as few DOM moves as possible.
  let cursor = body.firstElementChild;
  for (const rec of wanted) {
    if (rec.tr === cursor) {
      cursor = cursor.nextElementSibling;
    } else {
      body.insertBefore(rec.tr, cursor);
    }
  }
  $('matrix-empty').hidden = wanted.length > 0;
}

function toggle(key) {
  if (state.expanded.has(key)) {
    state.expanded.delete(key);
  } else {
    state.expanded.add(key);
    if (key.startsWith('g\u0000')) loadProbes(key.slice(2));
  }
  render();
}

// ---------- an agent's probes ----------

function probesRow(agentId) {
  const key = keyOf.probes(agentId);
  let rec = state.rows.get(key);
  if (!rec) {
    const tr = el('tr', 'row probes-row');
    tr.dataset.key = key;
    const td = el('td', 'probes');
    td.colSpan = state.ports.length + 1;
    tr.append(td);
    rec = { key, tr, td, cells: new Map(), shown: null };
    state.rows.set(key, rec);
  }
  const p = state.probes.get(agentId);
  if (rec.shown !== p) {
    rec.shown = p;
    rec.td.replaceChildren(probesTable(agentId, p));
  }
  return rec;
}

function probesTable(agentId, p) {
  if (!p || p.loading) return el('p', 'probes-note', `loading recent probes of ${agentId}…`);
  if (p.error) return el('p', 'probes-note error', `could not load probes: ${p.error}`);
  if (!p.results.length) return el('p', 'probes-note', 'no probes stored for this agent');
  const t = el('table', 'probe-table');
  t.append(el('caption', null, `Recent probes of ${agentId} (newest first)`));
  const hr = el('tr');
  for (const h of ['at', 'target', 'port', 'family', 'address', 'level', 'outcome', 'dns', 'connect', 'banner', 'tls', 'detail']) {
    const th = el('th', null, h);
    th.scope = 'col';
    hr.append(th);
  }
  const thead = el('thead');
  thead.append(hr);
  const tb = el('tbody');
  for (const r of p.results) {
    // no_address (no AAAA, say) is a fact about the destination, never a failure.
    const kind = r.outcome === 'ok' ? 'ok' : r.outcome === 'no_address' ? 'na' : 'bad';
    const tr = el('tr', `probe-${kind}`);
    const o = el('td', 'outcome', `${{ ok: '✓', na: '–', bad: '✕' }[kind]} ${r.outcome}`);
    tr.append(
      el('td', null, fmtTime(r.at)), el('td', null, r.target), el('td', null, r.port),
      el('td', null, r.family), el('td', null, r.address ?? '—'), el('td', null, r.level), o,
      el('td', 'num', fmtMs(r.dns_ms)), el('td', 'num', fmtMs(r.connect_ms)),
      el('td', 'num', fmtMs(r.banner_ms)), el('td', 'num', fmtMs(r.tls_ms)),
      el('td', 'detail', r.detail ?? ''),
    );
    tb.append(tr);
  }
  t.append(thead, tb);
  return t;
}

async function loadProbes(agentId) {
  state.probes.set(agentId, { loading: true });
  try {
    const resp = await fetch(`/api/agents/${encodeURIComponent(agentId)}/results?limit=50`);
    signedOut(resp);
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const results = await resp.json();
    state.probes.set(agentId, { results: Array.isArray(results) ? results : [] });
  } catch (e) {
    state.probes.set(agentId, { error: String(e.message || e) });
  }
  render();
}

// ---------- matrix data ----------

// The columns are the matrix's own `ports`, the control port last and set apart.
function setMatrix(m) {
  if (!m || typeof m !== 'object') return;
  if (Array.isArray(m.ports) && m.ports.length) {
    const all = m.ports.map(String);
    const control = Number.isInteger(m.control_port) && all.includes(String(m.control_port)) ? String(m.control_port) : null;
    const ports = all.filter((p) => p !== control);
    if (control) ports.push(control);
    if (ports.join(',') !== state.ports.join(',') || control !== state.controlPort) {
      state.ports = ports;
      state.controlPort = control;
      for (const rec of state.rows.values()) rec.tr.remove();
      state.rows.clear();
      renderHead();
    }
  }
  state.matrix = m;
  renderFeeds(m.feeds);
  // Several collectors on one database: when it cannot be reached, what is shown is the last
  // state known, and the page must not call it live.
  state.storeDown = m.store || null;
  if (state.storeDown) setLive('stale', storeDownText(state.storeDown));
  else if (state.connected) setLive('live', 'live');
  render();
  refreshMail();
}

// The imported feeds' provenance and state, under the matrix: hidden without imports.
function renderFeeds(feeds) {
  const line = $('feeds-line');
  if (!line) return;
  if (!Array.isArray(feeds) || !feeds.length) {
    line.hidden = true;
    return;
  }
  const sig = JSON.stringify(feeds);
  if (line.dataset.sig === sig) return;
  line.dataset.sig = sig;
  line.replaceChildren(el('span', 'feeds-label', 'Imported feeds:'));
  for (const f of feeds) {
    if (!f || typeof f !== 'object') continue;
    const item = el('span', 'feed-item');
    item.dataset.feed = String(f.feed ?? '');
    let text = `${String(f.feed ?? '')}: `;
    if (f.snapshot_at) text += `snapshot of ${f.snapshot_at} by ${String(f.publisher ?? '?')}, key ${String(f.key_id ?? '?')}`;
    else text += 'no snapshot accepted';
    if (f.refused && typeof f.refused === 'object') {
      item.classList.add('feed-refused');
      text += ` — last one refused: ${String(f.refused.reason ?? f.refused.kind ?? '')}`;
    } else if (f.unreachable && typeof f.unreachable === 'object') {
      text += ` — not fetched: ${String(f.unreachable.reason ?? '')}`;
    }
    item.textContent = text;
    line.append(' ', item);
  }
  line.hidden = false;
}

// ---------- mail providers ----------
// Per mail provider × account (/api/mail-providers), fetched along with matrix updates, at most
// every 5 s; the section stays hidden until some agent probes a mail provider's preset.

const mail = { inFlight: false, at: -Infinity };

async function refreshMail() {
  if (mail.inFlight || performance.now() - mail.at < 5000) return;
  mail.inFlight = true;
  mail.at = performance.now();
  try {
    const resp = await fetch('/api/mail-providers');
    signedOut(resp);
    if (resp.ok) renderMail(await resp.json(), $('mail-section'), $('mail-body'));
  } catch {
    // The next matrix update asks again.
  } finally {
    mail.inFlight = false;
  }
}

function storeDownText(outage) {
  const since = Date.parse(outage.since);
  const when = Number.isFinite(since) ? fmtClock(since) : outage.since;
  const why = outage.reason ? ` (${outage.reason})` : '';
  return `not live: the database is unavailable since ${when}${why}`;
}

async function fetchMatrix() {
  const q = state.family === 'all' ? '' : `?family=${state.family}`;
  const resp = await fetch(`/api/matrix${q}`);
  signedOut(resp);
  if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
  return resp.json();
}

async function refreshMatrix() {
  const family = state.family;
  state.fetchedAt = performance.now();
  const m = await fetchMatrix();
  if (family === state.family) setMatrix(m);
  fresh();
}

// ---------- events ----------

function eventWho(e) {
  return [e.provider, e.account, e.agent].filter((x) => x !== null && x !== undefined && x !== '').join(' / ');
}

function eventItem(e) {
  const li = el('li', `event kind-${String(e.kind).replace(/[^a-z_]/g, '')}`);
  const time = el('time', 'at', fmtTime(e.at));
  time.dateTime = String(e.at ?? '');
  const head = el('div', 'event-head');
  head.append(time, ' ', el('span', 'kind', String(e.kind ?? '').replace(/_/g, ' ')), ' ', el('span', 'scope', e.scope));
  const body = el('div', 'event-body');
  const who = eventWho(e);
  if (who) body.append(el('span', 'who', who), ' ');
  if (e.target) body.append(el('span', 'target', e.target), ' ');
  if (e.port !== null && e.port !== undefined) body.append(el('span', 'port', `:${e.port}`), ' ');
  body.append(el('span', `from st-word-${e.from}`, e.from), ' → ', el('span', `to st-word-${e.to}`, e.to));
  // Only one family changed (null: both did, or the event is about no family).
  if (e.family) body.append(' ', el('span', 'fam', `over ${FAMILY_WORD[e.family] ?? String(e.family)} only`));
  if (e.outcome) body.append(' ', el('span', 'outcome', `(${e.outcome})`));
  if (e.silenced_by) body.append(' ', el('span', 'silenced', `silenced (${e.silenced_by}): no alert sent`));
  li.append(head, body);
  if (e.provider || e.port !== null && e.port !== undefined) {
    const b = el('button', 'goto', 'show cells');
    b.type = 'button';
    b.addEventListener('click', () => highlightEvent(e, true));
    li.append(b);
  }
  return li;
}

function renderEvents() {
  const list = $('events');
  list.replaceChildren(...state.events.map(eventItem));
  $('events-empty').hidden = state.events.length > 0;
}

function addEvent(e) {
  state.events.unshift(e);
  if (state.events.length > EVENT_LIMIT) state.events.length = EVENT_LIMIT;
  const list = $('events');
  const li = eventItem(e);
  li.classList.add('new');
  list.prepend(li);
  while (list.children.length > EVENT_LIMIT) list.lastChild.remove();
  $('events-empty').hidden = true;
  setTimeout(() => li.classList.remove('new'), HIGHLIGHT_MS);
  highlightEvent(e, false);
}

// The cells an event concerns: its provider row (and account row when shown) at its port, or
// the whole row when it has no port; a destination outage marks the port in every provider.
function eventCells(e) {
  const out = [];
  const port = e.port === null || e.port === undefined ? null : String(e.port);
  const rowsFor = [];
  if (e.provider) {
    rowsFor.push(state.rows.get(keyOf.provider(e.provider)));
    if (e.account) rowsFor.push(state.rows.get(keyOf.account(e.provider, e.account)));
    if (e.agent) rowsFor.push(state.rows.get(keyOf.agent(e.agent)));
  } else if (port) {
    for (const [k, rec] of state.rows) if (k.startsWith('p\u0000')) rowsFor.push(rec);
  }
  for (const rec of rowsFor) {
    if (!rec) continue;
    if (port && rec.cells.has(port)) out.push(rec.cells.get(port));
    else out.push(rec.tr);
  }
  return out;
}

function highlightEvent(e, scroll) {
  const targets = eventCells(e);
  for (const t of targets) {
    t.classList.remove('hl');
    void t.offsetWidth; // restart the animation
    t.classList.add('hl');
    clearTimeout(t.__hlTimer);
    t.__hlTimer = setTimeout(() => t.classList.remove('hl'), HIGHLIGHT_MS);
  }
  if (scroll && targets[0]) {
    targets[0].scrollIntoView({ block: 'center', behavior: 'smooth' });
    const rowHead = targets[0].closest('tr')?.querySelector('th, button');
    if (rowHead && rowHead.focus) rowHead.focus({ preventScroll: true });
  }
}

async function loadEvents() {
  const resp = await fetch('/api/events?limit=100');
  signedOut(resp);
  if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
  const list = await resp.json();
  state.events = Array.isArray(list) ? list.slice(0, EVENT_LIMIT) : [];
  renderEvents();
}

// ---------- live ----------

function setLive(kind, text) {
  const live = $('live');
  if (live.dataset.state === kind && live.textContent === text) return;
  live.dataset.state = kind;
  live.textContent = text;
}

function fresh() {
  state.lastMessageAt = Date.now();
  if (state.storeDown) setLive('stale', storeDownText(state.storeDown));
  else if (state.connected) setLive('live', 'live');
}

let checking = false;
async function watchdog() {
  const age = Date.now() - state.lastMessageAt;
  if (age <= STALE_AFTER_MS) return;
  // The collector only pushes on change: a quiet but healthy stream is confirmed by one fetch.
  if (!checking && state.connected) {
    checking = true;
    try {
      await refreshMatrix();
      return;
    } catch {
      /* fall through: stale */
    } finally {
      checking = false;
    }
  }
  if (state.lastMessageAt && Date.now() - state.lastMessageAt > STALE_AFTER_MS) {
    setLive('stale', `stale since ${fmtClock(state.lastMessageAt)}`);
  }
}

function connect() {
  const es = new EventSource('/api/stream');
  es.addEventListener('open', () => {
    state.firstAfterOpen = true;
    state.connected = true;
    fresh();
  });
  es.addEventListener('error', () => {
    state.connected = false;
    const stale = state.lastMessageAt && Date.now() - state.lastMessageAt > STALE_AFTER_MS;
    if (stale) setLive('stale', `stale since ${fmtClock(state.lastMessageAt)}`);
    else setLive('reconnecting', 'reconnecting…');
  });
  es.addEventListener('matrix', (msg) => {
    const first = state.firstAfterOpen;
    state.firstAfterOpen = false;
    state.connected = true;
    fresh();
    if (state.family === 'all') {
      let m;
      try {
        m = JSON.parse(msg.data);
      } catch {
        return;
      }
      setMatrix(m);
    } else if (!first || performance.now() - state.fetchedAt > 1000) {
      // The stream's matrix covers both families: ask for ours (unless the stream's opening
      // snapshot arrives just after we fetched it).
      refreshMatrix().catch(() => {});
    }
  });
  es.addEventListener('event', (msg) => {
    fresh();
    let e;
    try {
      e = JSON.parse(msg.data);
    } catch {
      return;
    }
    addEvent(e);
  });
  return es;
}

// ---------- start ----------

// The documented policy of a provider at a port, for the history view.
function docFor(provider, port) {
  const p = (state.matrix?.providers || []).find((x) => x.provider === provider);
  return p?.cells?.[String(port)]?.doc ?? null;
}

function start() {
  renderHead();
  initHistory({ docFor, family: () => (state.family === 'all' ? null : state.family), signedOut });
  const params = new URLSearchParams(location.search);
  const fam = params.get('family');
  if (fam === 'ipv4' || fam === 'ipv6' || fam === 'all') state.family = fam;
  for (const input of document.querySelectorAll('input[name="family"]')) {
    input.checked = input.value === state.family;
    input.addEventListener('change', () => {
      if (!input.checked) return;
      state.family = input.value;
      const u = new URL(location.href);
      if (state.family === 'all') u.searchParams.delete('family');
      else u.searchParams.set('family', state.family);
      history.replaceState(null, '', u);
      refreshMatrix().catch(() => setLive('stale', 'could not load the matrix'));
    });
  }
  // The stream opens with the whole matrix (both families): with "both" selected that first
  // message is the first render, and the matrix is fetched only if the stream is slow to come.
  const initialFetch = () => refreshMatrix().catch(() => setLive('reconnecting', 'could not load the matrix; retrying…'));
  if (state.family === 'all') {
    setTimeout(() => {
      if (!state.matrix) initialFetch();
    }, 2000);
  } else {
    initialFetch();
  }
  loadEvents().catch(() => {
    $('events-empty').hidden = false;
    $('events-empty').textContent = 'could not load events';
  });
  connect();
  setInterval(() => {
    watchdog();
  }, 1000);
  // "held for" texts age; re-render visible cells twice a minute (unchanged cells are skipped).
  setInterval(() => render(), 30_000);
}

// ---------- sign-in ----------
// Where the collector's API needs its token, the page trades it once for an HttpOnly session
// cookie (POST /session): EventSource cannot send an Authorization header, cookies it sends.

async function needsSignIn() {
  try {
    const resp = await fetch('/session', { cache: 'no-store' });
    if (!resp.ok) return false;
    const s = await resp.json();
    return Boolean(s.token_required && !s.signed_in);
  } catch {
    return false;
  }
}

function askForToken() {
  document.body.dataset.signin = 'required';
  setLive('signin', 'sign in to see the matrix');
  const form = $('signin');
  const input = $('signin-token');
  const error = $('signin-error');
  form.hidden = false;
  input.focus();
  return new Promise((resolve) => {
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      error.hidden = true;
      let resp;
      try {
        resp = await fetch('/session', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ token: input.value }),
        });
      } catch {
        error.textContent = 'the collector did not answer; try again';
        error.hidden = false;
        return;
      }
      if (resp.status === 204) {
        input.value = '';
        form.hidden = true;
        delete document.body.dataset.signin;
        setLive('connecting', 'connecting…');
        resolve();
      } else {
        error.textContent = resp.status === 401 ? 'wrong token' : `sign-in failed (HTTP ${resp.status})`;
        error.hidden = false;
        input.select();
      }
    });
  });
}

/** The token changed under an open page: start over, which asks for the new one. */
function signedOut(resp) {
  if (resp.status !== 401) return;
  // At most one reload in 10 s, so a collector that keeps refusing cannot spin the page.
  const last = Number(sessionStorage.getItem('egresswatch-reloaded-at') || 0);
  if (Date.now() - last < 10_000) return;
  sessionStorage.setItem('egresswatch-reloaded-at', String(Date.now()));
  location.reload();
}

async function boot() {
  if (await needsSignIn()) await askForToken();
  start();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
