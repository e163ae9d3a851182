// The Rookery admin page (served at /_rookery/admin/ui/ while the admin API is on).
//
// It keeps the admin token in sessionStorage (this tab only) and sends it as a bearer token on
// every call to the admin API (/_rookery/admin/...) and to the runtime's figures
// (/_rookery/stats, /metrics). Paths are relative to the page, so the page also works behind a
// proxy that serves Rookery under a prefix. Everything shown is put in the page with
// textContent, never as HTML; every error an API call returns is shown in #error.

'use strict';

const TOKEN_KEY = 'rookery-admin-token';
const API = new URL('../', document.baseURI); // /_rookery/admin/
const STATS = new URL('../../stats', document.baseURI); // /_rookery/stats
const METRICS = new URL('../../../metrics', document.baseURI); // /metrics
const KV_PAGE = 50;

const $ = (id) => document.getElementById(id);

/** What the page is showing. */
const state = {
  cls: null, // the chosen class's name
  objectsCursor: null,
  prefix: '', // the listing's filter and page size, kept for its "More"
  limit: 50,
  objectsLoad: 0, // bumped on every new listing: answers to an older one are dropped
  object: null, // the chosen object's summary
  kvCursor: null,
  objectLoad: 0,
};

function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? '';
}

/** An element with text (never HTML) and attributes. */
function el(tag, text, attrs = {}) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'className') e.className = v;
    else e.setAttribute(k, v);
  }
  return e;
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = false;
}

function clearMessages() {
  $('error').hidden = true;
  $('error').textContent = '';
  $('notice').hidden = true;
  $('notice').textContent = '';
}

function notice(message) {
  $('notice').textContent = message;
  $('notice').hidden = false;
}

/** An error an endpoint answered with: its status and its `{"error"}` text. */
class ApiError extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
  }
}

/** Calls `url` with the token; resolves with the answer's JSON (or text), throws an ApiError. */
async function call(url, { method = 'GET', body, text = false } = {}) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    throw new ApiError('network error', `${method} ${url.pathname}: ${e.message}`);
  }
  const raw = await response.text();
  if (!response.ok) {
    let message = raw || response.statusText;
    try {
      const parsed = JSON.parse(raw);
      if (parsed && typeof parsed.error === 'string') message = parsed.error;
    } catch { /* not JSON: the text as it is */ }
    throw new ApiError(response.status, `${method} ${url.pathname}: ${message}`);
  }
  if (text) return raw;
  try {
    return JSON.parse(raw);
  } catch {
    throw new ApiError(response.status, `${method} ${url.pathname}: the answer is not JSON`);
  }
}

/** The admin API's URL for `segments` (each percent-encoded) and `query`. */
function api(segments, query = {}) {
  const url = new URL(segments.map(encodeURIComponent).join('/'), API);
  for (const [k, v] of Object.entries(query)) {
    if (v !== null && v !== undefined && v !== '') url.searchParams.set(k, v);
  }
  return url;
}

/** Runs `action`, showing what it throws. */
async function guarded(action) {
  try {
    await action();
  } catch (e) {
    showError(e instanceof ApiError ? e.message : `error: ${e.message ?? e}`);
  }
}

function time(ms) {
  if (ms === null || ms === undefined) return '—';
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

// --- metrics -------------------------------------------------------------------------------

/** The sum of every sample of `name` in Prometheus text. */
function promSum(text, name) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) {
      const value = Number(line.slice(line.lastIndexOf(' ') + 1));
      if (Number.isFinite(value)) sum += value;
    }
  }
  return sum;
}

async function loadMetrics() {
  const [stats, prom] = await Promise.all([call(STATS), call(METRICS, { text: true })]);
  const figures = [
    ['live_objects', 'Live objects', stats.runtime.live_objects],
    ['requests', 'HTTP requests', promSum(prom, 'rookery_http_requests_total')],
    ['commits', 'Commits', stats.runtime.commits],
    ['websockets', 'WebSockets', stats.runtime.websockets],
    ['activations', 'Activations', stats.runtime.activations],
    ['connections', 'Open connections', stats.connections.open],
    ['alarms', 'Alarms scheduled', stats.alarms.scheduled],
  ];
  const dl = $('metrics');
  dl.replaceChildren(...figures.map(([key, label, value]) => {
    const div = el('div');
    div.append(el('dt', label), el('dd', value, { 'data-metric': key }));
    return div;
  }));
  $('metrics-when').textContent = `as of ${time(Date.now())}`;
}

// --- classes -------------------------------------------------------------------------------

async function loadClasses() {
  const { classes } = await call(api(['classes']));
  const list = $('classes');
  if (classes.length === 0) {
    list.replaceChildren(el('li', 'No classes.', { className: 'muted' }));
    return;
  }
  list.replaceChildren(...classes.map((c) => {
    const button = el('button', c.name, {
      type: 'button',
      'data-class': c.name,
      'aria-pressed': String(c.name === state.cls),
    });
    if (c.bindings.length) button.append(el('span', c.bindings.join(', '), { className: 'bindings' }));
    button.addEventListener('click', () => guarded(() => chooseClass(c.name)));
    const li = el('li');
    li.append(button);
    return li;
  }));
}

async function chooseClass(name) {
  clearMessages();
  state.cls = name;
  for (const b of document.querySelectorAll('#classes button')) {
    b.setAttribute('aria-pressed', String(b.dataset.class === name));
  }
  $('objects-class').textContent = name;
  $('objects-card').hidden = false;
  closeObject();
  await loadObjects(false);
}

// --- objects -------------------------------------------------------------------------------

function pageSize() {
  const n = Number($('limit').value);
  return Number.isInteger(n) && n >= 1 && n <= 1000 ? n : 50;
}

/** Lists the chosen class's objects: from the start, or (`more`) the next page. */
async function loadObjects(more) {
  const load = ++state.objectsLoad;
  const cls = state.cls;
  const tbody = $('objects').tBodies[0];
  if (!more) {
    tbody.replaceChildren();
    state.objectsCursor = null;
    state.prefix = $('prefix').value;
    state.limit = pageSize();
  }
  $('objects-more').hidden = true; // one "More" at a time
  $('objects-status').textContent = 'loading…';
  let page;
  try {
    page = await call(api(['classes', cls, 'objects'], {
      prefix: state.prefix,
      cursor: more ? state.objectsCursor : null,
      limit: state.limit,
    }));
  } catch (e) {
    if (load === state.objectsLoad) $('objects-status').textContent = 'failed';
    throw e;
  }
  if (load !== state.objectsLoad) return; // another listing started meanwhile
  for (const o of page.objects) tbody.append(objectRow(o));
  state.objectsCursor = page.cursor;
  $('objects-more').hidden = page.cursor === null;
  const shown = tbody.rows.length;
  $('objects-status').textContent = `${shown} object${shown === 1 ? '' : 's'} shown${page.cursor ? ', more to load' : ''}`;
}

function objectRow(o) {
  const tr = el('tr', null, { 'data-id': o.id });
  if (o.name !== null) tr.dataset.name = o.name;
  const open = el('button', 'Open', { type: 'button', className: 'link' });
  open.addEventListener('click', () => guarded(() => openObject(o)));
  const name = el('td', o.name ?? '(unknown)', { className: 'name' });
  const cells = [
    name,
    el('td', o.id, { className: 'id', title: o.id }),
    el('td', size(o.sizeBytes)),
    el('td', time(o.lastModifiedMs)),
    el('td', o.live ? 'yes' : 'no'),
    el('td', time(o.alarmMs)),
    el('td', o.sockets),
    el('td'),
  ];
  cells[cells.length - 1].append(open);
  tr.append(...cells);
  return tr;
}

// --- one object ----------------------------------------------------------------------------

function closeObject() {
  state.object = null;
  state.objectLoad++;
  $('object-card').hidden = true;
  $('delete-ask').hidden = true;
  for (const tr of document.querySelectorAll('#objects tr.selected')) tr.classList.remove('selected');
}

async function openObject(o) {
  clearMessages();
  const load = ++state.objectLoad;
  const cls = state.cls;
  state.object = o;
  state.kvCursor = null;
  for (const tr of $('objects').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.id === o.id);
  $('object-title').textContent = o.name ?? o.id;
  $('object-card').hidden = false;
  $('delete-ask').hidden = true;
  $('object-summary').replaceChildren();
  $('tables').tBodies[0].replaceChildren();
  $('kv').tBodies[0].replaceChildren();
  $('kv-more').hidden = true;
  const [detail, kv] = await Promise.all([
    call(api(['classes', cls, 'objects', o.id])),
    call(api(['classes', cls, 'objects', o.id, 'kv'], { limit: KV_PAGE })),
  ]);
  if (load !== state.objectLoad) return;
  const facts = [
    ['Class', cls],
    // Asked by id, the object may not know its name; the listing may have.
    ['Name', detail.name ?? o.name ?? '(unknown)'],
    ['Id', detail.id],
    ['Size', size(detail.sizeBytes)],
    ['Last active', time(detail.lastModifiedMs)],
    ['In memory', detail.live ? 'yes' : 'no'],
    ['Alarm', time(detail.alarmMs)],
    ['Sockets', detail.sockets],
  ];
  $('object-summary').replaceChildren(...facts.flatMap(([k, v]) => [
    el('dt', k), el('dd', v, k === 'Id' ? { className: 'mono' } : {}),
  ]));
  const tables = $('tables').tBodies[0];
  if (detail.tables.length === 0) {
    tables.append(rowOf([el('td', 'none', { className: 'muted', colspan: '3' })]));
  }
  for (const t of detail.tables) {
    const tr = rowOf([el('td', t.name, { className: 'mono', title: t.sql }), el('td', t.kind), el('td', t.rows ?? '—')]);
    tr.dataset.table = t.name;
    tables.append(tr);
  }
  showEntries(kv, load);
}

function rowOf(cells) {
  const tr = el('tr');
  tr.append(...cells);
  return tr;
}

/** Appends a page of key-value entries. */
function showEntries(page, load) {
  if (load !== state.objectLoad) return;
  const tbody = $('kv').tBodies[0];
  if (page.entries.length === 0 && tbody.rows.length === 0) {
    tbody.append(rowOf([el('td', 'none', { className: 'muted', colspan: '2' })]));
  }
  for (const { key, value } of page.entries) {
    const tr = rowOf([el('td', key, { className: 'mono' }), el('td', JSON.stringify(value), { className: 'mono' })]);
    tr.dataset.key = key;
    tbody.append(tr);
  }
  state.kvCursor = page.cursor;
  $('kv-more').hidden = page.cursor === null;
}

async function moreEntries() {
  const o = state.object;
  if (!o || state.kvCursor === null) return;
  const load = state.objectLoad;
  $('kv-more').hidden = true; // one "More" at a time
  const page = await call(api(['classes', state.cls, 'objects', o.id, 'kv'], { cursor: state.kvCursor, limit: KV_PAGE }));
  showEntries(page, load);
}

async function deleteObject() {
  const o = state.object;
  if (!o) return;
  clearMessages();
  $('delete-confirm').disabled = true;
  try {
    await call(api(['classes', state.cls, 'objects', o.id]), { method: 'DELETE' });
  } finally {
    $('delete-confirm').disabled = false;
  }
  for (const tr of [...$('objects').tBodies[0].rows]) {
    if (tr.dataset.id === o.id) tr.remove();
  }
  closeObject();
  notice(`Deleted ${o.name ?? o.id}.`);
  const shown = $('objects').tBodies[0].rows.length;
  $('objects-status').textContent = `${shown} object${shown === 1 ? '' : 's'} shown`;
}

// --- wiring --------------------------------------------------------------------------------

async function start() {
  clearMessages();
  // Both, each showing its own error: a stats token may guard the figures differently.
  await Promise.all([guarded(loadClasses), guarded(loadMetrics)]);
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = $('token').value.trim();
  $('token').value = '';
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  state.cls = null;
  $('objects-card').hidden = true;
  closeObject();
  start();
});
$('token-forget').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.cls = null;
  $('objects-card').hidden = true;
  closeObject();
  $('classes').replaceChildren(el('li', 'Enter the admin token to load them.', { className: 'muted' }));
  $('metrics').replaceChildren();
  $('metrics-when').textContent = '';
  clearMessages();
  notice('The token is forgotten.');
});
$('metrics-refresh').addEventListener('click', () => { clearMessages(); guarded(loadMetrics); });
$('filter-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if (!state.cls) return;
  clearMessages();
  closeObject();
  guarded(() => loadObjects(false));
});
$('objects-more').addEventListener('click', () => guarded(() => loadObjects(true)));
$('object-close').addEventListener('click', closeObject);
$('kv-more').addEventListener('click', () => guarded(moreEntries));
$('delete').addEventListener('click', () => {
  const o = state.object;
  if (!o) return;
  $('delete-question').textContent = `Delete ${o.name ?? o.id} of ${state.cls} for good? Its keys, tables and alarm are deleted and its WebSockets closed.`;
  $('delete-ask').hidden = false;
});
$('delete-cancel').addEventListener('click', () => { $('delete-ask').hidden = true; });
$('delete-confirm').addEventListener('click', () => guarded(deleteObject));

if (token()) start();
