// egresswatch mail-provider view: per mail provider × account, which of the mail provider's SMTP
// ports work and whether its HTTPS API answers (/api/mail-providers). Shown only when some agent's
// targets name a mail provider's preset. As in app.js, everything from the API goes into the page
// with textContent / createElement only.

const STATUS = {
  open: { sym: '✓', word: 'open' },
  blocked: { sym: '✕', word: 'blocked' },
  partial: { sym: '◐', word: 'partial' },
};

function statusOf(cell) {
  return STATUS[cell?.status] ? cell.status : 'unknown';
}

/** "587, 465 and 2525". */
function joinPorts(ports) {
  if (ports.length <= 1) return ports.join('');
  return `${ports.slice(0, -1).join(', ')} and ${ports[ports.length - 1]}`;
}

/**
 * The rows of the view as the page shows them, without a DOM: who, the SMTP verdict in words,
 * each port's status and the API's.
 */
export function mailRows(view) {
  const rows = Array.isArray(view?.rows) ? view.rows : [];
  return rows.map((r) => {
    const ports = Object.entries(r.smtp && typeof r.smtp === 'object' ? r.smtp : {})
      .map(([port, cell]) => ({ port: String(port), status: statusOf(cell), ok: cell?.ok ?? 0, failed: cell?.failed ?? 0 }))
      .sort((a, b) => Number(a.port) - Number(b.port));
    const open = Array.isArray(r.smtp_open_ports) ? r.smtp_open_ports.map(String) : [];
    let smtp;
    if (open.length) smtp = `works over ${joinPorts(open)}`;
    else if (ports.length && ports.every((p) => p.status === 'blocked')) smtp = 'blocked';
    else if (ports.length) smtp = 'partly';
    else smtp = 'not probed';
    const api = r.api ? statusOf(r.api) : 'unknown';
    let apiWords;
    if (!r.api) apiWords = 'not probed';
    else if (r.api_reachable) apiWords = open.length ? 'answers' : 'answers: the way out';
    else if (api === 'partial') apiWords = 'answers from some agents';
    // SMTP blocked everywhere and the API too: nothing of this provider is left (the detector's
    // way_out_lost event says when that happened).
    else apiWords = smtp === 'blocked' ? 'unreachable: no way out' : 'unreachable';
    return {
      name: String(r.title ?? r.mail_provider ?? ''),
      where: `${r.provider ?? ''} / ${r.account ?? ''}`,
      agents: Number(r.agents) || 0,
      smtp,
      ports,
      api,
      apiWords,
    };
  });
}

function statusSpan(status, text) {
  const span = document.createElement('span');
  span.className = `st st-${status}`;
  span.textContent = text;
  return span;
}

/** Renders the view into the section's table; the section is hidden while there is no row. */
export function renderMail(view, section, body) {
  const rows = mailRows(view);
  section.hidden = rows.length === 0;
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = r.name;
    const where = document.createElement('td');
    where.textContent = `${r.where} (${r.agents} agent${r.agents === 1 ? '' : 's'})`;
    const smtp = document.createElement('td');
    smtp.textContent = r.smtp;
    const ports = document.createElement('td');
    for (const p of r.ports) {
      const s = STATUS[p.status] || { sym: '?', word: 'unknown' };
      ports.append(statusSpan(p.status, `${p.port} ${s.sym} ${s.word}`), ' ');
    }
    const api = document.createElement('td');
    const a = STATUS[r.api] || { sym: '?', word: 'unknown' };
    api.append(statusSpan(r.api, `${a.sym} ${r.apiWords}`));
    tr.append(th, where, smtp, ports, api);
    body.append(tr);
  }
}
