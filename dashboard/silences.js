// egresswatch silences panel: lists the active silences (GET /api/silences), creates one from a
// matrix cell (each cell gets a "silence" button that fills the form with its provider, account
// or agent and port), and ends one (DELETE /api/silences/{id}). A separate ES module beside
// app.js: it reads the matrix only through the DOM app.js builds (row keys, cell ports), so the
// two stay independent. Like app.js it puts text in with textContent only.

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 30_000;
const AUTHOR_KEY = 'egresswatch-silence-author';

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// What a matrix row stands for, from the key app.js gives it (`p␀gcp`, `a␀gcp␀acct`,
// `r␀gcp␀acct␀region`, `g␀agent`): a region is silenced through its account.
function rowMatcher(key) {
  const [kind, ...parts] = String(key || '').split('\u0000');
  if (kind === 'p') return { provider: parts[0] };
  if (kind === 'a' || kind === 'r') return { provider: parts[0], account: parts[1] };
  if (kind === 'g') return { agent: parts[0] };
  return null;
}

function matcherWords(s) {
  if (s.all) return 'everything';
  const m = s.matcher || {};
  const parts = [];
  for (const k of ['provider', 'account', 'agent', 'target']) if (m[k]) parts.push(`${k} ${m[k]}`);
  if (m.port) parts.push(`port ${m.port}`);
  if (m.family) parts.push(m.family === 'ipv6' ? 'IPv6' : 'IPv4');
  return parts.join(', ');
}

function fmtWhen(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function say(text, isError) {
  const out = $('silence-status');
  out.textContent = text;
  out.classList.toggle('error', Boolean(isError));
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return body.error;
  } catch { /* not JSON */ }
  return `HTTP ${resp.status}`;
}

function silenceItem(s) {
  const li = el('li', `silence silence-${s.state}`);
  li.dataset.id = s.id;
  const head = el('div', 'silence-head');
  head.append(el('span', 'silence-what', matcherWords(s)));
  const until = s.state === 'pending' ? `from ${fmtWhen(s.starts_at)} until ${fmtWhen(s.ends_at)}` : `until ${fmtWhen(s.ends_at)}`;
  head.append(' ', el('span', 'silence-until', until));
  const body = el('div', 'silence-body');
  body.append(el('span', 'silence-reason', s.reason), ' — ', el('span', 'silence-by', s.created_by));
  const cells = el('span', 'silence-cells', `${s.matching_cells} current cell${s.matching_cells === 1 ? '' : 's'}`);
  body.append(' · ', cells);
  if (s.origin === 'config') body.append(' · ', el('span', 'silence-origin', 'from the config file'));
  li.append(head, body);
  if (s.origin !== 'config') {
    const end = el('button', 'silence-end', 'End');
    end.type = 'button';
    end.setAttribute('aria-label', `End the silence of ${matcherWords(s)}`);
    end.addEventListener('click', () => endSilence(s));
    li.append(end);
  }
  return li;
}

async function refresh() {
  let resp;
  try {
    resp = await fetch('/api/silences', { cache: 'no-store' });
  } catch {
    return;
  }
  if (!resp.ok) return; // signed out: app.js asks for the token; the next refresh fills in.
  const list = await resp.json();
  const items = Array.isArray(list) ? list : [];
  $('silences').replaceChildren(...items.map(silenceItem));
  $('silences-empty').hidden = items.length > 0;
}

async function endSilence(s) {
  let resp;
  try {
    resp = await fetch(`/api/silences/${encodeURIComponent(s.id)}`, { method: 'DELETE' });
  } catch {
    say('the collector did not answer; try again', true);
    return;
  }
  if (!resp.ok) {
    say(`could not end the silence: ${await errorText(resp)}`, true);
    return;
  }
  say(`ended the silence of ${matcherWords(s)}`);
  await refresh();
  $('silence-status').focus();
}

function openForm(matcher) {
  const form = $('silence-form');
  form.hidden = false;
  for (const k of ['provider', 'account', 'agent', 'target', 'port']) {
    form.elements[k].value = matcher && matcher[k] !== undefined ? matcher[k] : '';
  }
  form.elements.family.value = (matcher && matcher.family) || '';
  if (!form.elements.created_by.value) form.elements.created_by.value = localStorage.getItem(AUTHOR_KEY) || '';
  form.scrollIntoView({ block: 'nearest' });
  form.elements.reason.focus();
}

async function submit(ev) {
  ev.preventDefault();
  const form = $('silence-form');
  const f = form.elements;
  const matcher = {};
  for (const k of ['provider', 'account', 'agent', 'target']) if (f[k].value.trim()) matcher[k] = f[k].value.trim();
  if (f.port.value.trim()) matcher.port = Number(f.port.value);
  if (f.family.value) matcher.family = f.family.value;
  const hours = Number(f.hours.value) || 1;
  const body = {
    matcher,
    ends_at: new Date(Date.now() + hours * 3_600_000).toISOString(),
    reason: f.reason.value,
    created_by: f.created_by.value,
  };
  let resp;
  try {
    resp = await fetch('/api/silences', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  } catch {
    say('the collector did not answer; try again', true);
    return;
  }
  if (!resp.ok) {
    say(`not silenced: ${await errorText(resp)}`, true);
    return;
  }
  const s = await resp.json();
  localStorage.setItem(AUTHOR_KEY, body.created_by.trim());
  form.hidden = true;
  say(`silenced ${matcherWords(s)} (${s.matching_cells} current cell${s.matching_cells === 1 ? '' : 's'})`);
  await refresh();
  $('silence-status').focus();
}

// Every matrix cell gets a small "silence" button; app.js rebuilds a cell's content when it
// changes, so the buttons are put back whenever the matrix body changes.
function addCellButtons() {
  for (const td of document.querySelectorAll('#matrix-body td.cell')) {
    if (td.querySelector(':scope > .silence-cell')) continue;
    const tr = td.closest('tr');
    const m = rowMatcher(tr && tr.dataset.key);
    if (!m) continue;
    const matcher = { ...m, port: td.dataset.port };
    const b = el('button', 'silence-cell', 'silence');
    b.type = 'button';
    b.setAttribute('aria-label', `Silence ${matcherWords({ matcher })}`);
    b.addEventListener('click', () => openForm(matcher));
    td.append(b);
  }
}

function start() {
  $('silence-form').addEventListener('submit', submit);
  $('silence-cancel').addEventListener('click', () => {
    $('silence-form').hidden = true;
  });
  $('silence-new').addEventListener('click', () => openForm(null));
  new MutationObserver(addCellButtons).observe($('matrix-body'), { childList: true, subtree: true });
  addCellButtons();
  refresh();
  setInterval(refresh, REFRESH_MS);
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
