// End-to-end test of the admin page (/_rookery/admin/ui/) in real headless Chromium (Debian's
// /usr/bin/chromium through playwright-core):
//
// 1. `rookery serve` (the built-in demo config) with a random admin token, on a free port with a
//    fresh data directory; the page and its script are served with their guarding headers;
// 2. counters are made through the demo app's HTTP routes;
// 3. the page, opened at /_rookery/admin/, refuses a wrong token (the 401 is shown), then with
//    the right one lists the classes, the counters by name (paged, and filtered by prefix), one
//    counter's storage, and the figures at a glance;
// 4. one counter is deleted through the page (after confirming): the page and the JSON API both
//    show it gone and the others kept.
//
// Every wait is bounded; any failure exits non-zero. Run: `node admin.mjs` (after `npm ci`), with
// the binary at $ROOKERY_BIN, else $CARGO_TARGET_DIR/debug/rookery, else target/debug/rookery.
// With $ADMIN_SCREENSHOTS set to a directory, a screenshot of the page is saved there.

import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  BINARY, CHROMIUM, WAIT, logger, runTest, scratchDir, startServer, stopServer, waitInPage,
} from './harness.mjs';

const OVERALL = 120_000; // the whole test
const TOKEN = randomBytes(16).toString('hex'); // 32 characters
const COUNTERS = { 'adm-alpha': 1, 'adm-beta': 2, 'adm-gamma': 3 };
const log = logger('admin.mjs');

/** `fetch` with a bounded wait. */
function get(url, init = {}) {
  return fetch(url, { ...init, signal: AbortSignal.timeout(WAIT) });
}

/** The admin API's answer to GET `rest`, as JSON; throws unless 200. */
async function admin(base, rest) {
  const r = await get(`${base}/_rookery/admin/${rest}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  if (r.status !== 200) throw new Error(`GET /_rookery/admin/${rest}: ${r.status} ${await r.text()}`);
  return r.json();
}

/** Waits until `fn(arg)` is truthy in `page`; a timeout reports what the page shows. */
function until(page, what, fn, arg) {
  return waitInPage(page, what, fn, arg, () => ({
    error: document.getElementById('error')?.textContent,
    notice: document.getElementById('notice')?.textContent,
    classes: [...document.querySelectorAll('#classes button')].map((b) => b.dataset.class),
    objects: [...document.querySelectorAll('#objects tbody tr')].map((tr) => tr.dataset.name ?? tr.dataset.id),
    status: document.getElementById('objects-status')?.textContent,
    kv: [...document.querySelectorAll('#kv tbody tr')].map((tr) => tr.textContent),
  }));
}

/** The names of the listed objects, sorted. */
const listed = (page) => page.evaluate(() =>
  [...document.querySelectorAll('#objects tbody tr')].map((tr) => tr.dataset.name).sort());

const listShows = (names) => {
  const shown = [...document.querySelectorAll('#objects tbody tr')].map((tr) => tr.dataset.name).sort();
  return JSON.stringify(shown) === JSON.stringify([...names].sort())
    && document.getElementById('objects-status').textContent.includes('shown');
};

async function main() {
  if (!existsSync(BINARY)) throw new Error(`no rookery binary at ${BINARY}: build it first (cargo build -p rookery-server)`);
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install -y chromium)`);
  const dataDir = scratchDir('rookery-admin-data-');
  const profile = scratchDir('rookery-admin-profile-');

  const server = await startServer(dataDir, '127.0.0.1:0', ['--admin-token', TOKEN]);
  const base = `http://${server.addr}`;
  log(`rookery on ${server.addr}, data in ${dataDir}`);

  let context;
  try {
    // The page and its script, served by the binary with their guards, without a token.
    for (const [p, type] of [['/_rookery/admin/ui/', 'text/html'], ['/_rookery/admin/ui/admin.js', 'text/javascript']]) {
      const r = await get(`${base}${p}`);
      const h = (name) => r.headers.get(name) ?? '';
      if (r.status !== 200 || !h('content-type').startsWith(type) || h('cache-control') !== 'no-store'
        || h('x-frame-options') !== 'DENY' || !h('content-security-policy').includes("script-src 'self'")) {
        throw new Error(`GET ${p}: ${r.status} ${JSON.stringify(Object.fromEntries(r.headers))}`);
      }
    }

    log('making counters through the demo app');
    for (const [name, amount] of Object.entries(COUNTERS)) {
      const r = await get(`${base}/counter/${name}/increment?amount=${amount}`, { method: 'POST' });
      const body = await r.json();
      if (r.status !== 200 || body.value !== amount) throw new Error(`increment ${name}: ${r.status} ${JSON.stringify(body)}`);
    }

    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      timeout: WAIT,
    });
    const page = context.pages()[0] ?? await context.newPage();
    const problems = [];
    page.on('console', (m) => { if (m.type() === 'error') log(`console: ${m.text()}`); });
    page.on('pageerror', (e) => { problems.push(e.message); log(`page error: ${e.message}`); });

    log('opening the page at /_rookery/admin/');
    await page.goto(`${base}/_rookery/admin/`, { timeout: WAIT });
    if (new URL(page.url()).pathname !== '/_rookery/admin/ui/') throw new Error(`the page is at ${page.url()}`);

    log('a wrong token is refused, and the page says so');
    await page.fill('#token', 'not-the-admin-token-0123456789ab');
    await page.click('#token-use');
    await until(page, 'the 401 is shown', () => {
      const e = document.getElementById('error');
      return !e.hidden && e.textContent.includes('401');
    });
    if (await page.locator('#classes button').count() !== 0) throw new Error('a wrong token listed classes');

    log('the right token lists the classes and the counters');
    await page.fill('#token', TOKEN);
    await page.click('#token-use');
    await until(page, 'the Counter class is listed', () => !!document.querySelector('#classes button[data-class="Counter"]'));
    await until(page, 'the error is gone', () => document.getElementById('error').hidden);
    await page.click('#classes button[data-class="Counter"]');
    await until(page, 'the three counters are listed', listShows, Object.keys(COUNTERS));

    log('paging and filtering');
    await page.fill('#limit', '2');
    await page.click('#filter');
    await until(page, 'a first page of 2', () => document.querySelectorAll('#objects tbody tr').length === 2
      && !document.getElementById('objects-more').hidden);
    await page.click('#objects-more');
    await until(page, 'all three after "More"', listShows, Object.keys(COUNTERS));
    await until(page, 'no more to load', () => document.getElementById('objects-more').hidden);
    await page.fill('#prefix', 'adm-g');
    await page.click('#filter');
    await until(page, 'the filter keeps adm-gamma', listShows, ['adm-gamma']);
    await page.fill('#prefix', '');
    await page.fill('#limit', '50');
    await page.click('#filter');
    await until(page, 'all three again', listShows, Object.keys(COUNTERS));

    log("one counter's storage");
    await page.click('#objects tbody tr[data-name="adm-beta"] button');
    await until(page, "adm-beta's value is shown", () => {
      const tr = document.querySelector('#kv tbody tr[data-key="value"]');
      return tr?.cells[1].textContent === '2'
        && document.getElementById('object-title').textContent === 'adm-beta';
    });

    log('the figures at a glance');
    await page.click('#metrics-refresh');
    await until(page, 'live objects and requests are shown', () => {
      const n = (k) => Number(document.querySelector(`#metrics dd[data-metric="${k}"]`)?.textContent);
      return n('live_objects') >= 3 && n('requests') >= 3 && n('commits') >= 3;
    });

    if (process.env.ADMIN_SCREENSHOTS) {
      const file = path.join(process.env.ADMIN_SCREENSHOTS, 'admin.png');
      await page.screenshot({ path: file, fullPage: true, timeout: WAIT });
      log(`screenshot: ${file}`);
    }

    log('deleting adm-beta, cancelling first');
    await page.click('#delete');
    await until(page, 'the confirm step shows', () => !document.getElementById('delete-ask').hidden
      && document.getElementById('delete-question').textContent.includes('adm-beta'));
    await page.click('#delete-cancel');
    await until(page, 'the confirm step hides', () => document.getElementById('delete-ask').hidden);
    let after = await admin(base, 'classes/Counter/objects');
    if (after.objects.length !== 3) throw new Error(`cancelling deleted something: ${JSON.stringify(after)}`);
    await page.click('#delete');
    await page.click('#delete-confirm');
    await until(page, 'the page says it is deleted', () => {
      const n = document.getElementById('notice');
      return !n.hidden && n.textContent.includes('adm-beta');
    });
    await until(page, 'the list lost adm-beta', listShows, ['adm-alpha', 'adm-gamma']);

    log('the page and the JSON API agree');
    await page.click('#filter');
    await until(page, 'a fresh listing lacks adm-beta', listShows, ['adm-alpha', 'adm-gamma']);
    after = await admin(base, 'classes/Counter/objects');
    const names = after.objects.map((o) => o.name).sort();
    if (JSON.stringify(names) !== JSON.stringify(['adm-alpha', 'adm-gamma'])) {
      throw new Error(`the API lists ${JSON.stringify(names)} after the delete`);
    }
    const gone = await get(`${base}/_rookery/admin/classes/Counter/objects/adm-beta`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    if (gone.status !== 404) throw new Error(`the deleted object answers ${gone.status}`);
    const kept = await admin(base, 'classes/Counter/objects/adm-gamma/kv');
    if (JSON.stringify(kept.entries) !== JSON.stringify([{ key: 'value', value: 3 }])) {
      throw new Error(`adm-gamma kept ${JSON.stringify(kept)}`);
    }
    const shown = await listed(page);
    if (problems.length) throw new Error(`the page threw: ${problems.join('; ')}`);
    log(`the page lists ${JSON.stringify(shown)}; adm-beta is gone`);
  } finally {
    if (context) await context.close().catch(() => {});
    await stopServer(server.child);
  }
}

await runTest('admin.mjs', main, OVERALL);
