// The history view's decisions without a browser: history.js keeps them as plain functions
// (bucket grid, runs, the documented-policy verdict, which events concern a cell).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bucketGrid, runsOf, disagreement, eventsFor, query, fmtDuration } from '../history.js';

const H = 3600_000;
const T = Date.parse('2026-11-30T00:00:00Z');
const at = (h) => new Date(T + h * H).toISOString().replace(/\.\d{3}Z$/, 'Z');

test('the grid fills the buckets the API left out as unknown, aligned on its buckets', () => {
  const grid = bucketGrid({
    from: at(0.5), to: at(6), step_secs: 3600,
    buckets: [{ start: at(1), status: 'open', probes: 60 }, { start: at(4), status: 'blocked', probes: 60 }],
  });
  assert.deepEqual(grid.map((b) => [b.start, b.status]), [
    [T, 'unknown'], [T + H, 'open'], [T + 2 * H, 'unknown'], [T + 3 * H, 'unknown'], [T + 4 * H, 'blocked'], [T + 5 * H, 'unknown'],
  ]);
  assert.deepEqual(bucketGrid({ from: at(1), to: at(1), step_secs: 3600, buckets: [] }), []);
  assert.equal(bucketGrid({ from: at(0), to: at(2), step_secs: 3600, buckets: [{ start: at(0), status: 'weird' }] })[0].status, 'unknown');
});

test('runs join consecutive buckets of one status', () => {
  const grid = bucketGrid({
    from: at(0), to: at(5), step_secs: 3600,
    buckets: ['open', 'blocked', 'blocked', 'open', 'open'].map((status, i) => ({ start: at(i), status, probes: 10 })),
  });
  assert.deepEqual(runsOf(grid).map((r) => [r.status, r.start, r.end, r.probes]), [
    ['open', T, T + H, 10], ['blocked', T + H, T + 3 * H, 20], ['open', T + 3 * H, T + 5 * H, 20],
  ]);
});

const iv = (agent, status, from, to) => ({ agent, target: 'mx', family: 'ipv4', status, first_seen: at(from), last_seen: at(to) });

test('disagreement: since the start of the unbroken contradicting run of each series', () => {
  // Documented blocked; a-1 open since hour 2 (two intervals), a-2 blocked now.
  const d = disagreement('blocked', [iv('a-1', 'open', 5, 9), iv('a-1', 'open', 2, 5), iv('a-1', 'blocked', 0, 2), iv('a-2', 'blocked', 0, 9)]);
  assert.deepEqual(d, { current: true, since: T + 2 * H, series: 1, of: 2 });
  // Contradicted once, agrees now.
  assert.deepEqual(disagreement('open', [iv('a-1', 'open', 4, 9), iv('a-1', 'blocked', 1, 4)]), { current: false, lastUntil: T + 4 * H });
  // Partial contradicts neither policy (as in the matrix); restricted policies are not compared.
  assert.equal(disagreement('open', [iv('a-1', 'partial', 0, 9)]), null);
  assert.equal(disagreement('restricted', [iv('a-1', 'blocked', 0, 9)]), null);
});

test('the events of a cell: its provider (or none, for a destination) at its port, in the range', () => {
  const e = (over) => ({ kind: 'policy_changed', provider: 'gcp', account: 'a', agent: null, port: 587, at: at(3), ...over });
  const list = [
    e({ id: 1 }), e({ id: 2, port: 25 }), e({ id: 3, provider: 'aws' }), e({ id: 4, provider: null, kind: 'destination_outage' }),
    e({ id: 5, at: at(30) }), e({ id: 6, account: 'b' }), e({ id: 7, port: null, kind: 'agent_silent', agent: 'x' }),
    e({ id: 8, provider: null, port: null }), e({ id: 9, family: 'ipv6', at: at(4) }),
  ];
  const ids = (sel) => eventsFor(sel, list, T, T + 24 * H).map((x) => x.id);
  assert.deepEqual(ids({ provider: 'gcp', port: 587 }), [9, 1, 4, 6, 7]);
  assert.deepEqual(ids({ provider: 'gcp', account: 'a', port: 587, family: 'ipv4' }), [1, 4, 7]);
  assert.deepEqual(ids({ provider: 'gcp', account: 'a', agent: 'y', port: 587 }), [9, 1, 4]);
});

test('the query names only the selectors set', () => {
  assert.equal(query({ provider: 'gcp', account: null, port: 587, family: null }, { step: '1h' }), 'provider=gcp&port=587&step=1h');
  assert.equal(query({ provider: 'a b&c', agent: 'x' }, {}), 'provider=a+b%26c&agent=x');
  assert.equal(fmtDuration(6 * H), '6 h');
  assert.equal(fmtDuration(3 * 24 * H + H), '3 d 1 h');
});
