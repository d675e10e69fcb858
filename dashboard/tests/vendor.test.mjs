// The vendored uPlot (dashboard/vendor/, embedded by the collector) is byte for byte the package
// pinned in package-lock.json: scripts/vendor-dashboard --check, as CI runs it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

test('dashboard/vendor/ holds the pinned uPlot, unchanged', () => {
  const r = spawnSync(path.join(REPO, 'scripts/vendor-dashboard'), ['--check'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /is uplot \d+\.\d+\.\d+/);
});
