// egresswatch history view: one ES module, no framework, no build step. A matrix cell (a provider,
// an account or an agent at one port) opens a modal dialog with what that cell did over 24 h, 7 d
// or 90 d: a status strip in the matrix's colours with its runs as text, p50/p95 connect time
// (uPlot, vendored and served by the collector), the events on the same time axis, the
// provider's documented policy and since when observation has contradicted it, and the stored
// intervals as a table (/api/history, /api/intervals, /api/events).
//
// As in app.js, everything that came from an agent or the API is put into the page with
// textContent / createElement only; styles are set through CSSOM (el.style.x), which the strict
// CSP allows, never as style attributes in markup.

const STATUS = {
  open: { sym: '✓', word: 'open' },
  blocked: { sym: '✕', word: 'blocked' },
  partial: { sym: '◐', word: 'partial' },
  unknown: { sym: '?', word: 'unknown' },
};
const FAMILY_WORD = { ipv4: 'IPv4', ipv6: 'IPv6' };
const HOUR = 3600_000;
const DAY = 24 * HOUR;
// The step keeps each range within the API's default bucket count (at most 500).
export const RANGES = [
  { id: '24h', label: '24 h', ms: DAY, step: '1h' },
  { id: '7d', label: '7 d', ms: 7 * DAY, step: '1h' },
  { id: '90d', label: '90 d', ms: 90 * DAY, step: '1d' },
];
const EVENTS_LIMIT = 1000;
const INTERVALS_LIMIT = 200;

const view = {
  dialog: null,
  opener: null, // the button that opened the view: focus goes back to it
  selector: null,
  range: RANGES[0],
  loadSeq: 0,
  chart: null,
  resize: null,
  context: null,
};

export function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

/** "source: …" for a documented policy; only http(s) sources become links, the rest stay text. */
export function sourceLine(source, className) {
  const p = el('p', className);
  if (/^https?:\/\//i.test(source)) {
    const a = el('a', null, source);
    a.href = source;
    a.rel = 'noopener noreferrer';
    a.target = '_blank';
    p.append('source: ', a);
  } else {
    p.textContent = `source: ${source}`;
  }
  return p;
}

function statusOf(s) {
  return STATUS[s] ? s : 'unknown';
}

// ---------- formatting ----------

function fmtMs(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  if (v < 10) return `${v.toFixed(1)} ms`;
  return `${Math.round(v)} ms`;
}

function fmtTime(ms) {
  if (!Number.isFinite(ms)) return '—';
  const s = new Date(ms).toISOString();
  return `${s.slice(0, 10)} ${s.slice(11, 16)}Z`;
}

export function fmtDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '—';
  const m = Math.round(ms / 60_000);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

function parseTime(v) {
  const t = typeof v === 'number' ? v : Date.parse(v);
  return Number.isFinite(t) ? t : NaN;
}

/** "gcp / acct-a, port 587 (IPv4)" — the cell the view is about. */
export function selectorTitle(sel) {
  const who = sel.agent ? `agent ${sel.agent}` : [sel.provider, sel.account].filter(Boolean).join(' / ');
  const fam = sel.family ? ` (${FAMILY_WORD[sel.family] ?? sel.family})` : '';
  return `${who}, port ${sel.port}${fam}`;
}

// ---------- decisions (pure: no DOM) ----------

/**
 * The buckets of [from, to) at `stepMs`, aligned on the API's buckets: those the API returned,
 * and `unknown` ones where it returned none, so each bucket has the same width in the strip.
 */
export function bucketGrid(resp) {
  const stepMs = Number(resp.step_secs) * 1000;
  const from = parseTime(resp.from);
  const to = parseTime(resp.to);
  if (!(stepMs > 0) || !Number.isFinite(from) || !Number.isFinite(to) || to <= from) return [];
  const byStart = new Map();
  for (const b of Array.isArray(resp.buckets) ? resp.buckets : []) {
    const t = parseTime(b.start);
    if (Number.isFinite(t)) byStart.set(t, b);
  }
  const starts = [...byStart.keys()].sort((a, b) => a - b);
  // Align on the first returned bucket, else on the step from the epoch (as 1h / 1d are).
  const anchor = starts.length ? starts[0] : Math.floor(from / stepMs) * stepMs;
  let first = anchor - Math.floor((anchor - from) / stepMs) * stepMs;
  if (first > from) first -= stepMs;
  const grid = [];
  for (let t = first; t < to && grid.length < 2000; t += stepMs) {
    const b = byStart.get(t);
    grid.push({
      start: t,
      end: t + stepMs,
      status: statusOf(b?.status),
      probes: b?.probes ?? 0,
      ok: b?.ok ?? 0,
      failed: b?.failed ?? 0,
      outcomes: b?.outcomes && typeof b.outcomes === 'object' ? b.outcomes : {},
      p50: typeof b?.p50_connect_ms === 'number' ? b.p50_connect_ms : null,
      p95: typeof b?.p95_connect_ms === 'number' ? b.p95_connect_ms : null,
    });
  }
  return grid;
}

/** Consecutive buckets of one status, oldest first: what the strip's text alternative lists. */
export function runsOf(grid) {
  const runs = [];
  for (const b of grid) {
    const last = runs[runs.length - 1];
    if (last && last.status === b.status) {
      last.end = b.end;
      last.buckets += 1;
      last.probes += b.probes;
    } else {
      runs.push({ status: b.status, start: b.start, end: b.end, buckets: 1, probes: b.probes });
    }
  }
  return runs;
}

/** The same rule as the matrix's "≠ docs" (collector: matrix::policies::contradicts). */
export function contradicts(policy, status) {
  return (policy === 'blocked' && status === 'open') || (policy === 'open' && status === 'blocked');
}

/**
 * Since when observation has contradicted the documented policy, from the intervals: each
 * series (agent × target × family) whose newest interval contradicts it counts from the start
 * of its unbroken run of contradicting intervals. Returns { current: true, since, series, of }
 * while some series contradicts, { current: false, lastUntil } when one did earlier, or null.
 */
export function disagreement(policy, intervals) {
  if (policy !== 'blocked' && policy !== 'open') return null;
  const series = new Map();
  for (const iv of intervals) {
    const key = [iv.agent, iv.target, iv.family].join('\u0000');
    if (!series.has(key)) series.set(key, []);
    series.get(key).push(iv);
  }
  let since = Infinity;
  let contradicting = 0;
  let lastUntil = -Infinity;
  for (const list of series.values()) {
    list.sort((a, b) => parseTime(b.first_seen) - parseTime(a.first_seen));
    for (const iv of list) {
      if (contradicts(policy, iv.status)) lastUntil = Math.max(lastUntil, parseTime(iv.last_seen));
    }
    if (!contradicts(policy, list[0].status)) continue;
    contradicting += 1;
    for (const iv of list) {
      if (!contradicts(policy, iv.status)) break;
      since = Math.min(since, parseTime(iv.first_seen));
    }
  }
  if (contradicting) return { current: true, since, series: contradicting, of: series.size };
  if (Number.isFinite(lastUntil)) return { current: false, lastUntil };
  return null;
}

/** The events that concern the selection and fall in [from, to), newest first. */
export function eventsFor(sel, events, from, to) {
  const same = (want, have) => want === null || want === undefined || have === null || have === undefined || want === have;
  return events.filter((e) => {
    const at = parseTime(e.at);
    if (!(at >= from && at < to)) return false;
    // A destination outage names no provider: it concerns every provider at its port.
    if (e.provider && e.provider !== sel.provider) return false;
    if (!e.provider && !(e.port !== null && e.port !== undefined)) return false;
    if (e.port !== null && e.port !== undefined && Number(e.port) !== Number(sel.port)) return false;
    if (e.family && sel.family && e.family !== sel.family) return false;
    return same(sel.account, e.account) && same(sel.agent, e.agent);
  }).sort((a, b) => parseTime(b.at) - parseTime(a.at));
}

export function query(sel, extra) {
  const q = new URLSearchParams();
  for (const k of ['provider', 'account', 'agent', 'target', 'port', 'family']) {
    if (sel[k] !== null && sel[k] !== undefined && sel[k] !== '') q.set(k, String(sel[k]));
  }
  for (const [k, v] of Object.entries(extra)) q.set(k, String(v));
  return q.toString();
}

// ---------- fetching ----------

/** GET a JSON API; a non-2xx answer throws with the API's own `error` message. */
async function getJson(url) {
  const resp = await fetch(url);
  view.context?.signedOut?.(resp);
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (!resp.ok) {
    const msg = body && typeof body.error === 'string' ? body.error : resp.statusText || 'no message';
    throw new Error(`HTTP ${resp.status}: ${msg}`);
  }
  if (body === null) throw new Error('the answer was not JSON');
  return body;
}

// ---------- rendering ----------

function section(className, title) {
  const s = el('section', `hist-section ${className}`);
  const id = `hist-${className}-title`;
  const h = el('h3', null, title);
  h.id = id;
  s.setAttribute('aria-labelledby', id);
  s.append(h);
  return s;
}

function note(text, kind) {
  const p = el('p', `hist-note${kind ? ` ${kind}` : ''}`, text);
  if (kind === 'error') p.setAttribute('role', 'alert');
  return p;
}

function statusWord(status) {
  const s = statusOf(status);
  return el('span', `st-chip st-${s}`, `${STATUS[s].sym} ${STATUS[s].word}`);
}

function bucketTitle(b) {
  const outcomes = Object.entries(b.outcomes).map(([k, v]) => `${k} ${v}`).join(', ');
  const s = STATUS[b.status];
  return `${fmtTime(b.start)}: ${s.sym} ${s.word}${b.probes ? ` — ${b.probes} probes${outcomes ? ` (${outcomes})` : ''}` : ' — no probes'}`;
}

/** Where `t` falls on the shared time axis, as a percentage of [from, to). */
function pct(t, from, to) {
  return `${Math.max(0, Math.min(100, ((t - from) / (to - from)) * 100)).toFixed(3)}%`;
}

function renderTimeline(box, grid, events, range) {
  box.replaceChildren();
  if (!grid.length) {
    box.append(note('no buckets in this range'));
    return;
  }
  const from = grid[0].start;
  const to = grid[grid.length - 1].end;
  const runs = runsOf(grid);
  const closed = runs.filter((r) => r.status === 'blocked' || r.status === 'partial');

  const summary = el('p', 'hist-summary');
  const lastClosed = closed[closed.length - 1];
  if (!lastClosed) {
    summary.textContent = runs.some((r) => r.status === 'open')
      ? `Not closed in the last ${range.label}.`
      : `No probes in the last ${range.label}.`;
  } else if (lastClosed.end >= to) {
    summary.textContent = `${STATUS[lastClosed.status].word} since ${fmtTime(lastClosed.start)} (${fmtDuration(to - lastClosed.start)} so far).`;
  } else {
    summary.textContent = `Last closed (${STATUS[lastClosed.status].word}) ${fmtTime(lastClosed.start)} – ${fmtTime(lastClosed.end)}, for ${fmtDuration(lastClosed.end - lastClosed.start)}.`;
  }
  box.append(summary);

  const axis = el('div', 'hist-axis');
  const strip = el('div', 'hist-strip');
  strip.setAttribute('role', 'img');
  strip.setAttribute('aria-label', `status over the last ${range.label}: ${runs.map((r) => `${STATUS[r.status].word} ${fmtTime(r.start)} to ${fmtTime(r.end)}`).join('; ')}`);
  for (const b of grid) {
    const d = el('div', `hist-bucket st-${b.status}`);
    d.dataset.status = b.status;
    d.dataset.start = new Date(b.start).toISOString();
    d.title = bucketTitle(b);
    strip.append(d);
  }
  const lane = el('div', 'hist-lane');
  lane.setAttribute('aria-hidden', 'true');
  for (const e of events) {
    const m = el('span', `hist-mark kind-${String(e.kind).replace(/[^a-z_]/g, '')}`, '▲');
    m.style.left = pct(parseTime(e.at), from, to);
    m.title = `${fmtTime(parseTime(e.at))} ${String(e.kind ?? '').replace(/_/g, ' ')}: ${e.from} → ${e.to}`;
    lane.append(m);
  }
  const ticks = el('div', 'hist-ticks');
  ticks.setAttribute('aria-hidden', 'true');
  ticks.append(el('span', null, fmtTime(from)), el('span', null, fmtTime(to)));
  axis.append(strip, lane, ticks);
  box.append(axis);

  const list = el('ol', 'hist-runs');
  list.setAttribute('aria-label', `status runs, oldest first`);
  for (const r of runs) {
    const li = el('li', `run-${r.status}`);
    li.append(statusWord(r.status), ` ${fmtTime(r.start)} – ${fmtTime(r.end)} (${fmtDuration(r.end - r.start)})`);
    if (r.probes) li.append(el('span', 'hist-muted', ` · ${r.probes} probes`));
    list.append(li);
  }
  const details = el('details', 'hist-runs-box');
  details.open = runs.length <= 12;
  details.append(el('summary', null, `Runs as text (${runs.length})`), list);
  box.append(details);
}

// The chart's colours live in style.css; read once (getComputedStyle forces a style pass).
let palette = null;
function chartPalette() {
  if (!palette) {
    const css = getComputedStyle(document.documentElement);
    const get = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    palette = { p50: get('--hist-p50', '#1d4ed8'), p95: get('--hist-p95', '#b45309'), event: get('--hist-event', '#4a2a7a') };
  }
  return palette;
}

function destroyChart() {
  view.resize?.disconnect();
  view.resize = null;
  view.chart?.destroy();
  view.chart = null;
}

function renderChart(box, grid, events, timeline) {
  destroyChart();
  box.replaceChildren();
  const withLatency = grid.filter((b) => b.p50 !== null || b.p95 !== null);
  if (!withLatency.length) {
    box.append(note('no connect in this range: no latency to show'));
    return;
  }
  const p50s = withLatency.map((b) => b.p50).filter((v) => v !== null);
  const p95s = withLatency.map((b) => b.p95).filter((v) => v !== null);
  const text = el('p', 'hist-muted hist-chart-text');
  text.textContent = `p50 connect ${p50s.length ? `${fmtMs(Math.min(...p50s))} to ${fmtMs(Math.max(...p50s))}` : '—'}, p95 up to ${p95s.length ? fmtMs(Math.max(...p95s)) : '—'}, in ${withLatency.length} of ${grid.length} buckets.`;
  box.append(text);
  if (typeof window.uPlot !== 'function') {
    box.append(note('the chart library did not load', 'error'));
    return;
  }
  const plot = el('div', 'hist-plot');
  plot.setAttribute('aria-hidden', 'true');
  box.append(plot);
  const from = grid[0].start / 1000;
  const to = grid[grid.length - 1].end / 1000;
  // Each bucket's figures sit at its middle, on the same axis as the strip.
  const xs = grid.map((b) => (b.start + b.end) / 2000);
  const eventTimes = events.map((e) => parseTime(e.at) / 1000);
  const colours = chartPalette();
  const opts = {
    width: Math.max(200, plot.clientWidth || box.clientWidth || 300),
    height: 180,
    scales: { x: { time: true, range: [from, to] }, y: { range: (u, min, max) => [0, Math.max(1, max) * 1.1] } },
    legend: { show: true },
    cursor: { y: false },
    series: [
      {},
      { label: 'p50 connect', stroke: colours.p50, width: 2, value: (u, v) => fmtMs(v) },
      { label: 'p95 connect', stroke: colours.p95, width: 2, dash: [6, 4], value: (u, v) => fmtMs(v) },
    ],
    axes: [{}, { label: 'ms', size: 50 }],
    hooks: {
      // uPlot commits a new size after setSize returns: align then.
      setSize: [(u) => alignTimeline(u, timeline)],
      draw: [(u) => {
        // The events, as dashed lines at their time.
        const { ctx } = u;
        ctx.save();
        ctx.strokeStyle = colours.event;
        ctx.lineWidth = Math.max(1, devicePixelRatio);
        ctx.setLineDash([4, 4]);
        for (const t of eventTimes) {
          const x = Math.round(u.valToPos(t, 'x', true));
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
        }
        ctx.restore();
      }],
    },
  };
  const data = [xs, grid.map((b) => b.p50), grid.map((b) => b.p95)];
  view.chart = new window.uPlot(opts, data, plot);
  alignTimeline(view.chart, timeline);
  view.resize = new ResizeObserver(() => {
    const w = plot.clientWidth;
    if (view.chart && w && Math.abs(w - view.chart.width) > 1) {
      view.chart.setSize({ width: Math.max(200, w), height: 180 });
    }
  });
  view.resize.observe(plot);
}

/** Puts the strip and its event lane right above the chart's plot area: one time axis. */
function alignTimeline(u, timeline) {
  const axis = timeline.querySelector('.hist-axis');
  if (!axis) return;
  const left = u.bbox.left / devicePixelRatio;
  const right = u.width - (u.bbox.left + u.bbox.width) / devicePixelRatio;
  axis.style.marginLeft = `${Math.max(0, left)}px`;
  axis.style.marginRight = `${Math.max(0, right)}px`;
}

function renderEvents(box, events) {
  box.replaceChildren();
  if (!events.length) {
    box.append(note('no events for this cell in this range'));
    return;
  }
  const ol = el('ol', 'hist-events');
  for (const e of events) {
    const li = el('li');
    const time = el('time', null, fmtTime(parseTime(e.at)));
    time.dateTime = String(e.at ?? '');
    li.append(time, ' ', el('strong', null, String(e.kind ?? '').replace(/_/g, ' ')), ' ');
    const who = [e.account, e.agent].filter((x) => x !== null && x !== undefined && x !== '').join(' / ');
    if (who) li.append(el('span', 'hist-muted', who), ' ');
    li.append(el('span', `st-word-${String(e.from)}`, e.from), ' → ', el('span', `st-word-${String(e.to)}`, e.to));
    if (e.family) li.append(` over ${FAMILY_WORD[e.family] ?? String(e.family)} only`);
    if (e.outcome) li.append(` (${e.outcome})`);
    ol.append(li);
  }
  box.append(ol);
}

function renderPolicy(box, doc, intervals) {
  box.replaceChildren();
  if (!doc) {
    box.append(note('no documented policy for this provider and port'));
    return;
  }
  const p = el('p', 'hist-policy');
  p.append('Documented: ', el('strong', null, doc.policy));
  if (doc.summary) p.append(` — ${doc.summary}`);
  box.append(p);
  if (doc.source) box.append(sourceLine(doc.source, 'hist-muted hist-source'));
  const v = el('p', 'hist-verdict');
  if (!intervals) {
    v.textContent = 'the intervals did not load: whether observation agrees is not known';
  } else {
    const d = disagreement(doc.policy, intervals);
    if (!d) {
      v.textContent = doc.policy === 'blocked' || doc.policy === 'open'
        ? 'Observation agrees with it in every stored interval shown.'
        : `A "${doc.policy}" policy is not compared with observation.`;
    } else if (d.current) {
      v.classList.add('disagrees');
      v.append(el('span', 'mismatch', '≠ docs'), ` Observation has disagreed since ${fmtTime(d.since)} (${fmtDuration(Date.now() - d.since)}; ${d.series} of ${d.of} series).`);
    } else {
      v.textContent = `Observation agrees with it now; it last disagreed until ${fmtTime(d.lastUntil)}.`;
    }
  }
  box.append(v);
}

/** A table cell with the time to the minute, and to the millisecond in its `datetime`. */
function timeCell(ms) {
  const td = el('td', 'nowrap');
  const t = el('time', null, fmtTime(ms));
  if (Number.isFinite(ms)) t.dateTime = new Date(ms).toISOString();
  td.append(t);
  return td;
}

function renderIntervals(box, intervals, sel) {
  box.replaceChildren();
  if (!intervals.length) {
    box.append(note('no intervals stored for this cell in this range'));
    return;
  }
  const wrap = el('div', 'hist-table-wrap');
  const t = el('table', 'hist-intervals');
  t.append(el('caption', null, `Intervals of ${selectorTitle(sel)}, newest first`));
  const hr = el('tr');
  for (const h of ['from', 'to', 'for', 'status', 'outcome', 'agent', 'target', 'family', 'probes', 'p50', 'p95']) {
    const th = el('th', null, h);
    th.scope = 'col';
    hr.append(th);
  }
  const thead = el('thead');
  thead.append(hr);
  const tb = el('tbody');
  for (const iv of intervals) {
    const first = parseTime(iv.first_seen);
    const last = parseTime(iv.last_seen);
    const tr = el('tr');
    tr.dataset.status = statusOf(iv.status);
    const st = el('td');
    st.append(statusWord(iv.status));
    tr.append(
      timeCell(first), timeCell(last), el('td', 'nowrap', fmtDuration(last - first)),
      st, el('td', null, iv.outcome ?? '—'), el('td', null, iv.agent ?? '—'), el('td', null, iv.target ?? '—'),
      el('td', null, FAMILY_WORD[iv.family] ?? iv.family ?? '—'), el('td', 'num', iv.probes ?? '—'),
      el('td', 'num', fmtMs(iv.p50_connect_ms)), el('td', 'num', fmtMs(iv.p95_connect_ms)),
    );
    tb.append(tr);
  }
  t.append(thead, tb);
  wrap.append(t);
  box.append(wrap);
}

// ---------- the dialog ----------

function build() {
  const d = view.dialog;
  d.replaceChildren();
  const head = el('header', 'hist-head');
  const title = el('h2', null, `History: ${selectorTitle(view.selector)}`);
  title.id = 'history-title';
  title.tabIndex = -1;
  const close = el('button', 'hist-close', '✕ close');
  close.type = 'button';
  close.setAttribute('aria-label', 'close the history (Escape)');
  close.addEventListener('click', () => closeHistory());
  head.append(title, close);

  const ranges = el('div', 'hist-ranges');
  ranges.setAttribute('role', 'group');
  ranges.setAttribute('aria-label', 'time range');
  for (const r of RANGES) {
    const b = el('button', 'hist-range', r.label);
    b.type = 'button';
    b.dataset.range = r.id;
    b.setAttribute('aria-pressed', String(r === view.range));
    b.addEventListener('click', () => {
      if (view.range === r) return;
      view.range = r;
      for (const x of ranges.children) x.setAttribute('aria-pressed', String(x.dataset.range === r.id));
      load();
    });
    ranges.append(b);
  }
  const status = el('p', 'hist-status');
  status.id = 'history-status';
  status.setAttribute('role', 'status');
  status.setAttribute('aria-live', 'polite');

  const timeline = section('timeline', 'Status');
  const chart = section('chart', 'Connect time (p50, p95)');
  const events = section('events', 'Events');
  const policy = section('policy', 'Documented policy');
  const intervals = section('intervals', 'Intervals');
  const csv = el('a', 'hist-csv', 'as CSV');
  csv.id = 'history-csv';
  intervals.querySelector('h3').append(' ', csv);
  for (const s of [timeline, chart, events, policy, intervals]) s.append(el('div', 'hist-body'));
  d.append(head, ranges, status, timeline, chart, events, policy, intervals);
}

function body(name) {
  return view.dialog.querySelector(`.hist-section.${name} .hist-body`);
}

async function load() {
  const seq = ++view.loadSeq;
  const sel = view.selector;
  const range = view.range;
  const to = Date.now();
  const from = to - range.ms;
  const iso = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const d = view.dialog;
  d.dataset.state = 'loading';
  d.setAttribute('aria-busy', 'true');
  d.querySelector('#history-status').textContent = `loading the last ${range.label}…`;
  destroyChart();
  for (const name of ['timeline', 'chart', 'events', 'intervals']) body(name).replaceChildren(note('loading…'));
  const span = { from: iso(from), to: iso(to) };
  d.querySelector('#history-csv').href = `/api/intervals?${query(sel, { ...span, limit: INTERVALS_LIMIT, format: 'csv' })}`;
  const settled = await Promise.allSettled([
    getJson(`/api/history?${query(sel, { ...span, step: range.step })}`),
    getJson(`/api/intervals?${query(sel, { ...span, limit: INTERVALS_LIMIT })}`),
    getJson(`/api/events?limit=${EVENTS_LIMIT}`),
  ]);
  if (seq !== view.loadSeq || !d.open) return; // another range or cell was asked for meanwhile
  const [hist, ivs, evs] = settled;
  const failures = [];
  const events = evs.status === 'fulfilled' && Array.isArray(evs.value) ? eventsFor(sel, evs.value, from, to) : [];
  if (evs.status === 'rejected') failures.push(`events: ${evs.reason.message}`);
  if (hist.status === 'fulfilled') {
    const grid = bucketGrid(hist.value);
    renderTimeline(body('timeline'), grid, events, range);
    renderChart(body('chart'), grid, events, body('timeline'));
  } else {
    failures.push(`history: ${hist.reason.message}`);
    body('timeline').replaceChildren(note(`could not load the history — ${hist.reason.message}`, 'error'));
    body('chart').replaceChildren(note('no history, no chart', 'error'));
  }
  if (evs.status === 'fulfilled') renderEvents(body('events'), events);
  else body('events').replaceChildren(note(`could not load the events — ${evs.reason.message}`, 'error'));
  let intervals = null;
  if (ivs.status === 'fulfilled') {
    intervals = Array.isArray(ivs.value.intervals) ? ivs.value.intervals : [];
    renderIntervals(body('intervals'), intervals, sel);
  } else {
    failures.push(`intervals: ${ivs.reason.message}`);
    body('intervals').replaceChildren(note(`could not load the intervals — ${ivs.reason.message}`, 'error'));
  }
  renderPolicy(body('policy'), view.context?.docFor?.(sel.provider, sel.port) ?? null, intervals);
  d.dataset.state = failures.length ? 'error' : 'ready';
  d.removeAttribute('aria-busy');
  d.querySelector('#history-status').textContent = failures.length
    ? `the last ${range.label}, with errors (${failures.length})`
    : `the last ${range.label}, ${fmtTime(from)} – ${fmtTime(to)}`;
}

/** Opens the view for `sel` ({ provider, account?, agent?, port, family? }). */
export function openHistory(sel, opener) {
  if (!view.dialog) return;
  view.selector = { ...sel, family: view.context?.family?.() ?? null };
  view.opener = opener ?? document.activeElement;
  build();
  if (!view.dialog.open) view.dialog.showModal();
  view.dialog.querySelector('#history-title').focus();
  load();
}

export function closeHistory() {
  if (view.dialog?.open) view.dialog.close();
}

function restoreFocus() {
  let target = view.opener;
  // The cell may have been redrawn while the view was open: its new button stands in.
  if (!target || !target.isConnected) {
    const s = view.selector;
    target = s && [...document.querySelectorAll('button.hist-open')].find((b) =>
      b.dataset.provider === String(s.provider ?? '') && b.dataset.account === String(s.account ?? '')
      && b.dataset.agent === String(s.agent ?? '') && b.dataset.port === String(s.port));
  }
  target?.focus?.();
  view.opener = null;
}

/** The button a matrix cell carries to open its history. */
export function historyButton(sel) {
  const b = el('button', 'hist-open', 'history');
  b.type = 'button';
  b.dataset.provider = String(sel.provider ?? '');
  b.dataset.account = String(sel.account ?? '');
  b.dataset.agent = String(sel.agent ?? '');
  b.dataset.port = String(sel.port);
  b.setAttribute('aria-label', `history of ${selectorTitle(sel)}`);
  b.setAttribute('aria-haspopup', 'dialog');
  b.addEventListener('click', (ev) => {
    ev.stopPropagation();
    openHistory(sel, b);
  });
  return b;
}

/**
 * Wires the view to the page: `context.docFor(provider, port)` gives the documented policy,
 * `context.family()` the family shown (null for both), `context.signedOut(resp)` handles a 401.
 */
export function initHistory(context) {
  view.context = context;
  view.dialog = document.getElementById('history');
  if (!view.dialog) return;
  view.dialog.addEventListener('close', () => {
    view.loadSeq += 1;
    destroyChart();
    restoreFocus();
  });
  // A click anywhere in a cell (but on its own controls) opens its history.
  document.getElementById('matrix-body')?.addEventListener('click', (ev) => {
    const td = ev.target.closest?.('td.cell');
    if (!td || ev.target.closest('details, a, button, summary')) return;
    td.querySelector('button.hist-open')?.click();
  });
}
