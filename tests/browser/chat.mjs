// End-to-end test of the Waddle chat page (/chat) in real headless Chromium (Debian's
// /usr/bin/chromium through playwright-core):
//
// 1. `rookery serve` (the built-in demo config) on a free port with a fresh data directory;
// 2. two pages join the same channel as Ann and Bob: both see each other online, both see the
//    other typing, and they chat;
// 3. the server is killed with SIGKILL; both pages notice; each sends a message while offline;
// 4. the server is started again on the same port and data directory; both pages reconnect on
//    their own, their queued messages are delivered, and they chat on;
// 5. both pages show exactly the messages the server stored, in order, once each.
//
// Every wait is bounded; any failure exits non-zero. Run: `node chat.mjs` (after `npm ci`), with
// the binary at $ROOKERY_BIN, else $CARGO_TARGET_DIR/debug/rookery, else target/debug/rookery.
// With $CHAT_SCREENSHOTS set to a directory, screenshots of both pages are saved there.

import { existsSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  BINARY, CHROMIUM, WAIT, kill9, logger, restartServer, runTest, scratchDir, startServer, stopServer,
  waitInPage,
} from './harness.mjs';

const OVERALL = 180_000; // the whole test
const CHANNEL = 'e2e';
const log = logger('chat.mjs');

/** Waits until `fn(arg)` is truthy in `page`; a timeout reports what the page shows. */
function until(page, what, fn, arg) {
  return waitInPage(page, what, fn, arg, () => ({
    status: document.getElementById('status')?.dataset.status,
    messages: [...document.querySelectorAll('#messages li')].map((li) => li.textContent),
    online: [...document.querySelectorAll('#online li')].map((li) => li.textContent),
    typing: document.getElementById('typing')?.textContent,
  }));
}

const messagesOf = (page) => page.evaluate(() => [...document.querySelectorAll('#messages li')].map((li) => ({
  sequence: Number(li.dataset.sequence),
  id: li.dataset.id,
  author: li.querySelector('.author').textContent,
  content: li.querySelector('.content').textContent,
})));

const hasMessage = (content) => [...document.querySelectorAll('#messages .content')].some((c) => c.textContent === content);
const statusIs = (status) => document.getElementById('status').dataset.status === status;
const sees = (name) => [...document.querySelectorAll('#online li')].some((li) => li.textContent === name);
const typingShows = (text) => document.getElementById('typing').textContent === text;

async function join(page, name) {
  await page.goto(`${page.base}/chat`, { timeout: WAIT });
  await page.fill('#name', name);
  await page.fill('#channel', CHANNEL);
  await page.click('#join');
  await until(page, 'online', statusIs, 'online');
}

/** Types `content` key by key (so the page sends typing indicators) and presses Enter. */
async function type(page, content) {
  await page.locator('#message-input').pressSequentially(content, { delay: 5 });
}

async function send(page, content) {
  await page.fill('#message-input', content);
  await page.press('#message-input', 'Enter');
}

/** Sends `content` from `from` and waits until every page shows it. */
async function say(from, pages, content) {
  await send(from, content);
  for (const p of pages) await until(p, `"${content}" arrives`, hasMessage, content);
}

async function main() {
  if (!existsSync(BINARY)) throw new Error(`no rookery binary at ${BINARY}: build it first (cargo build -p rookery-server)`);
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install -y chromium)`);
  const dataDir = scratchDir('rookery-chat-data-');
  const profile = scratchDir('rookery-chat-profile-');

  let server = await startServer(dataDir, '127.0.0.1:0');
  const addr = server.addr;
  log(`rookery on ${addr}, data in ${dataDir}`);

  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: WAIT,
  });
  try {
    const ann = context.pages()[0] ?? await context.newPage();
    const bob = await context.newPage();
    ann.who = 'Ann';
    bob.who = 'Bob';
    for (const p of [ann, bob]) {
      p.base = `http://${addr}`;
      p.on('console', (m) => { if (m.type() === 'error') log(`${p.who} console: ${m.text()}`); });
      p.on('pageerror', (e) => log(`${p.who} page error: ${e.message}`));
    }
    const both = [ann, bob];

    // The page itself is served by the binary, with its client.
    const page = await fetch(`http://${addr}/chat`);
    if (page.status !== 200 || !page.headers.get('content-type')?.startsWith('text/html')) {
      throw new Error(`GET /chat: ${page.status} ${page.headers.get('content-type')}`);
    }
    const js = await fetch(`http://${addr}/chat/waddle-client.js`);
    if (js.status !== 200 || !js.headers.get('content-type')?.startsWith('text/javascript')) {
      throw new Error(`GET /chat/waddle-client.js: ${js.status} ${js.headers.get('content-type')}`);
    }

    log('both join');
    await join(ann, 'Ann');
    await join(bob, 'Bob');
    await until(ann, 'Ann sees Bob online', sees, 'Bob');
    await until(bob, 'Bob sees Ann online', sees, 'Ann');
    await until(bob, 'Bob sees himself online', sees, 'Bob');

    log('typing and chatting');
    await type(ann, 'hello b');
    await until(bob, 'Bob sees Ann typing', typingShows, 'Ann is typing…');
    await send(ann, 'hello bob');
    for (const p of both) await until(p, '"hello bob" arrives', hasMessage, 'hello bob');
    await until(bob, 'Ann no longer typing', typingShows, '');
    await type(bob, 'hi a');
    await until(ann, 'Ann sees Bob typing', typingShows, 'Bob is typing…');
    await send(bob, 'hi ann');
    for (const p of both) await until(p, '"hi ann" arrives', hasMessage, 'hi ann');
    await until(ann, 'Bob no longer typing', typingShows, '');
    await say(ann, both, 'how are you?');

    log('kill -9');
    await kill9(server.child);
    for (const p of both) await until(p, 'the page notices the server is gone', statusIs, 'offline');

    log('sending while offline');
    await send(ann, 'ann while offline');
    await send(bob, 'bob while offline');
    for (const p of both) {
      await until(p, 'the message is queued', () => /1 message/.test(document.getElementById('queue').textContent));
    }

    log('restart on the same port and data directory');
    server = await restartServer(dataDir, addr, [], log);
    for (const p of both) {
      await until(p, 'reconnected', statusIs, 'online');
      await until(p, 'both offline messages arrive',
        () => ['ann while offline', 'bob while offline'].every((c) =>
          [...document.querySelectorAll('#messages .content')].some((e) => e.textContent === c)));
      await until(p, 'the queue is empty', () => document.getElementById('queue').textContent === '');
    }
    await until(ann, 'Ann sees Bob online again', sees, 'Bob');
    await until(bob, 'Bob sees Ann online again', sees, 'Ann');

    log('chatting after the restart');
    await type(bob, 'still th');
    await until(ann, 'Ann sees Bob typing after the restart', typingShows, 'Bob is typing…');
    if (process.env.CHAT_SCREENSHOTS) {
      await ann.screenshot({ path: path.join(process.env.CHAT_SCREENSHOTS, 'chat-Ann-typing.png'), timeout: WAIT });
    }
    await send(bob, 'still there?');
    for (const p of both) await until(p, '"still there?" arrives', hasMessage, 'still there?');
    await say(ann, both, 'yes, back');
    await say(bob, both, 'bye');

    log('checking the full message list');
    const stored = await (await fetch(
      `http://${addr}/channel/${CHANNEL}/messages?limit=500&user=check&permissions=read`)).json();
    const expected = stored.messages.map((m) => ({
      sequence: m.sequence, id: m.id, author: m.username, content: m.content,
    }));
    const contents = expected.map((m) => m.content);
    const want = ['hello bob', 'hi ann', 'how are you?', 'ann while offline', 'bob while offline',
      'still there?', 'yes, back', 'bye'];
    const sorted = (a) => [...a].sort();
    if (JSON.stringify(sorted(contents)) !== JSON.stringify(sorted(want)) || contents.length !== want.length) {
      throw new Error(`the server stored ${JSON.stringify(contents)}, expected ${JSON.stringify(want)}`);
    }
    expected.forEach((m, i) => {
      if (m.sequence !== i + 1) throw new Error(`stored sequences are not 1..n: ${JSON.stringify(expected)}`);
    });
    for (const p of both) {
      const shown = await messagesOf(p);
      if (JSON.stringify(shown) !== JSON.stringify(expected)) {
        throw new Error(`${p.who} shows\n${JSON.stringify(shown, null, 1)}\nbut the server stored\n${JSON.stringify(expected, null, 1)}`);
      }
      if (new Set(shown.map((m) => m.id)).size !== shown.length) throw new Error(`${p.who} shows a duplicate`);
    }
    log(`both pages show the ${expected.length} stored messages, in order, once each`);
    if (process.env.CHAT_SCREENSHOTS) {
      for (const p of both) {
        const file = path.join(process.env.CHAT_SCREENSHOTS, `chat-${p.who}.png`);
        await p.screenshot({ path: file, fullPage: true, timeout: WAIT });
        log(`screenshot: ${file}`);
      }
    }
  } finally {
    await context.close().catch(() => {});
    await stopServer(server.child);
  }
}

await runTest('chat.mjs', main, OVERALL);
