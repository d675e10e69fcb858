// The mail-provider view's decisions without a browser: mail.js keeps them as a plain function.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mailRows } from '../mail.js';

const cell = (status, ok, failed) => ({ status, ok, failed });

test('SMTP blocked with the API answering is the way out; SMTP working names its ports', () => {
  const rows = mailRows({
    generated_at: '2026-12-07T00:00:00Z',
    rows: [
      {
        mail_provider: 'zeptomail', title: 'ZeptoMail (Zoho)', provider: 'digitalocean', account: 'team', agents: 2,
        smtp: { 587: cell('blocked', 0, 4), 465: cell('blocked', 0, 4) }, smtp_open_ports: [],
        api: cell('open', 4, 0), api_reachable: true,
      },
      {
        mail_provider: 'zeptomail', title: 'ZeptoMail (Zoho)', provider: 'hetzner', account: 'main', agents: 1,
        smtp: { 587: cell('open', 2, 0), 465: cell('partial', 1, 1) }, smtp_open_ports: [587],
        api: cell('blocked', 0, 2), api_reachable: false,
      },
    ],
  });
  assert.deepEqual(rows.map((r) => [r.name, r.where, r.smtp, r.api, r.apiWords]), [
    ['ZeptoMail (Zoho)', 'digitalocean / team', 'blocked', 'open', 'answers: the way out'],
    ['ZeptoMail (Zoho)', 'hetzner / main', 'works over 587', 'blocked', 'unreachable'],
  ]);
  assert.deepEqual(rows[1].ports.map((p) => [p.port, p.status]), [['465', 'partial'], ['587', 'open']]);
});

test('SMTP blocked and the API unreachable too is no way out', () => {
  const [r] = mailRows({
    rows: [{
      mail_provider: 'zeptomail', title: 'ZeptoMail (Zoho)', provider: 'digitalocean', account: 'team', agents: 2,
      smtp: { 587: cell('blocked', 0, 4), 465: cell('blocked', 0, 4) }, smtp_open_ports: [],
      api: cell('blocked', 0, 4), api_reachable: false,
    }],
  });
  assert.deepEqual([r.smtp, r.api, r.apiWords], ['blocked', 'blocked', 'unreachable: no way out']);
});

test('odd or missing input gives no rows and no throw', () => {
  assert.deepEqual(mailRows(null), []);
  assert.deepEqual(mailRows({ rows: 'x' }), []);
  const [r] = mailRows({ rows: [{ smtp: { 25: { status: 'weird' } } }] });
  assert.equal(r.ports[0].status, 'unknown');
  assert.equal(r.apiWords, 'not probed');
});
