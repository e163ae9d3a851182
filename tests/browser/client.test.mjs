// Unit tests of web/waddle-client.js against a scripted fake WebSocket (no server, no browser):
// the offline queue, sync by afterMessageId on reconnect, holding live messages during the
// replay, dedupe by id, presence and typing, and the backoff's bounds.
// Run: node --test tests/browser/client.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WaddleClient, WaddleWebSocket } from '../../web/waddle-client.js';

class FakeSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 3;
  static last = null;

  constructor(url) {
    this.url = url;
    this.CONNECTING = 0;
    this.OPEN = 1;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.last = this;
  }

  open() {
    this.readyState = 1;
    this.onopen?.();
  }

  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  drop() {
    this.readyState = 3;
    this.onclose?.({ code: 1006, wasClean: false });
  }

  send(text) {
    assert.equal(this.readyState, 1, 'sent on an open socket only');
    this.sent.push(JSON.parse(text));
  }

  close() {
    this.drop();
  }
}

const msg = (sequence, content) => ({
  sequence, id: `id-${sequence}`, channelId: 'c', userId: 'u', username: 'U', content, timestamp: sequence, threadId: null,
});
const frame = (m, extra = {}) => ({ type: 'message', ...m, message: m, ...extra });

function client() {
  const c = new WaddleClient({ channelId: 'c', base: 'ws://test', query: { user: 'ann' }, WebSocket: FakeSocket, baseDelayMs: 1, maxDelayMs: 4 });
  const seen = [];
  c.on('message', (m) => seen.push(m.content));
  return { c, seen };
}

test('first connection delivers initial_state, announces presence', () => {
  const { c, seen } = client();
  c.connect();
  const ws = FakeSocket.last;
  assert.equal(ws.url, 'ws://test/channel/c/websocket?user=ann');
  ws.open();
  ws.receive({ type: 'initial_state', lastSequence: 2, messages: [msg(1, 'a'), msg(2, 'b')], typing: [], onlineUsers: [{ userId: 'ann', username: 'Ann', joinedAt: 1 }] });
  assert.deepEqual(seen, ['a', 'b']);
  assert.equal(c.status, 'online');
  assert.deepEqual(ws.sent, [{ type: 'presence', status: 'online' }]);
  assert.deepEqual(c.onlineUsers().map((u) => u.userId), ['ann']);
  c.close();
});

test('reconnect: queue, sync by id, held live messages, dedupe, order', async () => {
  const { c, seen } = client();
  c.connect();
  let ws = FakeSocket.last;
  ws.open();
  ws.receive({ type: 'initial_state', lastSequence: 1, messages: [msg(1, 'a')], typing: [] });
  ws.drop();
  assert.equal(c.status, 'offline');
  assert.equal(c.sendMessage('queued'), false);
  assert.equal(c.setTyping(true), false, 'typing is not queued');
  assert.equal(c.messageQueue.length, 1);
  // The reconnect timer fires (1..4 ms).
  await new Promise((r) => setTimeout(r, 20));
  ws = FakeSocket.last;
  assert.notEqual(ws.readyState, 3);
  ws.open();
  ws.receive({ type: 'initial_state', lastSequence: 3, messages: [msg(2, 'b'), msg(3, 'c')], typing: [] });
  assert.deepEqual(ws.sent, [
    { type: 'sync', afterMessageId: 'id-1' },
    { type: 'presence', status: 'online' },
    { type: 'message', content: 'queued' },
  ]);
  // Live messages (our queued one, 4) arrive before the replay: held back.
  ws.receive(frame(msg(4, 'queued')));
  assert.deepEqual(seen, ['a']);
  ws.receive(frame(msg(2, 'b'), { replay: true }));
  ws.receive(frame(msg(3, 'c'), { replay: true }));
  ws.receive(frame(msg(3, 'c'), { replay: true }));
  ws.receive({ type: 'sync', replayed: 3, lastSequence: 3, hasMore: false });
  ws.receive(frame(msg(4, 'queued')));
  assert.deepEqual(seen, ['a', 'b', 'c', 'queued']);
  assert.deepEqual(c.messages.map((m) => m.sequence), [1, 2, 3, 4]);
  assert.equal(c.lastMessageId, 'id-4');
  c.close();
});

test('presence and typing', () => {
  const { c } = client();
  c.connect();
  const ws = FakeSocket.last;
  ws.open();
  ws.receive({ type: 'initial_state', lastSequence: 0, messages: [], typing: ['bob'], onlineUsers: [{ userId: 'bob', username: 'Bob' }] });
  assert.deepEqual(c.typingUsers(), [{ userId: 'bob', username: 'Bob' }]);
  ws.receive({ type: 'typing', userId: 'bob', username: 'Bob', isTyping: false, users: [] });
  assert.deepEqual(c.typingUsers(), []);
  ws.receive({ type: 'presence', userId: 'cat', username: 'Cat', status: 'online' });
  assert.deepEqual(c.onlineUsers().map((u) => u.username), ['Bob', 'Cat']);
  ws.receive({ type: 'user_disconnected', userId: 'bob', username: 'Bob' });
  assert.deepEqual(c.onlineUsers().map((u) => u.username), ['Cat']);
  c.close();
});

test('backoff doubles, jitters and is capped', () => {
  assert.equal(WaddleClient.backoffDelay(0, 1000, 30000, 0), 500);
  assert.equal(WaddleClient.backoffDelay(0, 1000, 30000, 1), 1000);
  assert.equal(WaddleClient.backoffDelay(3, 1000, 30000, 1), 8000);
  for (const attempt of [5, 10, 100]) {
    for (const r of [0, 0.5, 1]) {
      const d = WaddleClient.backoffDelay(attempt, 1000, 30000, r);
      assert.ok(d >= 15000 && d <= 30000, `${attempt} ${r}: ${d}`);
    }
  }
});

test("seed 004's constructor: the token travels as the subprotocol", () => {
  let protocols;
  class Recording extends FakeSocket {
    constructor(url, p) {
      super(url);
      protocols = p;
    }
  }
  const c = new WaddleWebSocket('general', 'tok', { base: 'ws://test', WebSocket: Recording });
  c.connect();
  assert.equal(FakeSocket.last.url, 'ws://test/channel/general/websocket');
  assert.deepEqual(protocols, ['tok']);
  c.close();
});

test('a reconnect without any message yet syncs from sequence 0', () => {
  const { c, seen } = client();
  c.connect();
  let ws = FakeSocket.last;
  ws.open();
  ws.receive({ type: 'initial_state', lastSequence: 0, messages: [], typing: [] });
  ws.drop();
  c.connect();
  ws = FakeSocket.last;
  ws.open();
  ws.receive({ type: 'initial_state', lastSequence: 60, messages: [msg(60, 'sixty')], typing: [] });
  assert.deepEqual(ws.sent[0], { type: 'sync', after: 0 });
  ws.receive(frame(msg(61, 'live')));
  ws.receive({ type: 'sync', messages: [msg(1, 'one')], lastSequence: 61, hasMore: true });
  assert.deepEqual(ws.sent[2], { type: 'sync', afterMessageId: 'id-1' });
  ws.receive(frame(msg(60, 'sixty'), { replay: true }));
  ws.receive({ type: 'sync', replayed: 1, lastSequence: 61, hasMore: false });
  assert.deepEqual(seen, ['one', 'sixty', 'live']);
  c.close();
});
