// Waddle channel client: seed 004's WaddleWebSocket (issue #04, section 4), finished.
// Protocol: docs/PROTOCOL.md. A plain ES module, no build step:
//
//   import { WaddleClient } from '/chat/waddle-client.js';
//   const chat = new WaddleClient({ channelId: 'general', query: { user: 'ann', name: 'Ann', permissions: 'read,write' } });
//   chat.on('message', (m) => show(m));
//   chat.connect();
//   chat.sendMessage('hello');
//
// What it adds to the seed:
// - Reconnects after any close it did not ask for (the server drops sockets without a close
//   frame on restart, so wasClean is false, but a clean close is retried too), with exponential
//   backoff, jitter and a cap: min(base * 2^attempt, max), half fixed and half random. The
//   attempt count resets once the channel's initial_state arrives.
// - Queues messages while offline and sends them, in order, once the channel answers again.
// - On every reconnect, asks for what it missed with sync {afterMessageId} (the newest message
//   it has) and holds live messages back until the replay ends, so messages arrive in order.
// - Delivers each message once (dedupe by id), keeps them sorted by sequence in `messages`.
// - Tracks who is online (initial_state's onlineUsers, presence, user_disconnected) and who is
//   typing (typing frames); announces itself with presence 'online' on every connection.
//
// Events (chat.on(type, fn)): 'status' ({status: 'connecting'|'online'|'offline'|'closed',
// retryInMs?}), 'message' (each message once, in sequence order), 'online' (array of users),
// 'typing' (array of {userId, username}), 'error' (the server's error message), 'queue' (how
// many messages wait), and 'frame' (every frame as received, as the seed's emit(type, data)).

export class WaddleClient {
  constructor(options = {}) {
    this.channelId = options.channelId ?? 'general';
    this.url = options.url ?? WaddleClient.channelUrl(this.channelId, options.query, options.base);
    // Browsers cannot set headers on a WebSocket: a token travels as the subprotocol (seed 000).
    this.token = options.token ?? null;
    this.baseDelayMs = options.baseDelayMs ?? 1000;
    this.maxDelayMs = Math.max(options.maxDelayMs ?? 30000, this.baseDelayMs);
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this.maxQueue = options.maxQueue ?? 1000;
    this.announcePresence = options.announcePresence ?? true;
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;

    this.ws = null;
    this.status = 'closed';
    this.reconnectAttempts = 0;
    this.messageQueue = [];
    this.lastMessageId = null;
    this.lastSequence = 0;
    this.messages = []; // every message once, by sequence
    this.seen = new Set(); // ids delivered
    this.online = new Map(); // userId -> {userId, username, status}
    this.typing = new Map(); // userId -> username
    this.listeners = new Map();

    this.closedByUs = false;
    this.reconnectTimer = null;
    this.connectTimer = null;
    this.syncing = false;
    this.held = [];
    this.initialMessages = [];
    this.everConnected = false;
  }

  /** The WebSocket URL of a channel on this page's server (seed 004's route). */
  static channelUrl(channelId, query, base) {
    const origin = base ?? (typeof location !== 'undefined'
      ? `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}`
      : 'ws://127.0.0.1:8787');
    const params = query ? `?${new URLSearchParams(query)}` : '';
    return `${origin}/channel/${encodeURIComponent(channelId)}/websocket${params}`;
  }

  /** The delay before reconnect attempt `attempt`: exponential, capped, with equal jitter. */
  static backoffDelay(attempt, baseMs, maxMs, random = Math.random()) {
    const exp = Math.min(baseMs * 2 ** Math.min(attempt, 30), maxMs);
    return exp / 2 + (exp / 2) * Math.min(Math.max(random, 0), 1);
  }

  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  emit(type, data) {
    for (const fn of this.listeners.get(type) ?? []) {
      try {
        fn(data);
      } catch (e) {
        console.error(`waddle: a '${type}' listener failed`, e);
      }
    }
  }

  setStatus(status, extra = {}) {
    this.status = status;
    this.emit('status', { status, ...extra });
  }

  connect() {
    this.closedByUs = false;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.setStatus('connecting');
    let ws;
    try {
      ws = this.token
        ? new this.WebSocketImpl(this.url, [this.token])
        : new this.WebSocketImpl(this.url);
    } catch (e) {
      console.error('waddle: cannot open a WebSocket', e);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.syncing = false;
    this.held = [];
    this.initialMessages = [];
    // A handshake that hangs counts as failed.
    clearTimeout(this.connectTimer);
    this.connectTimer = setTimeout(() => {
      if (ws.readyState !== ws.OPEN) ws.close();
    }, this.connectTimeoutMs);

    ws.onopen = () => clearTimeout(this.connectTimer);

    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      this.handle(data);
    };

    ws.onclose = (event) => {
      clearTimeout(this.connectTimer);
      if (ws !== this.ws) return;
      this.ws = null;
      this.syncing = false;
      this.held = [];
      // Nobody is known to be online or typing until the channel says so again.
      this.online.clear();
      this.typing.clear();
      this.emit('online', this.onlineUsers());
      this.emit('typing', this.typingUsers());
      if (this.closedByUs) {
        this.setStatus('closed');
        return;
      }
      console.info('waddle: disconnected', event.code, event.wasClean ? 'clean' : 'not clean');
      this.scheduleReconnect();
    };

    ws.onerror = () => {
      // A close event follows; it decides what happens.
    };
  }

  scheduleReconnect() {
    const delay = WaddleClient.backoffDelay(this.reconnectAttempts, this.baseDelayMs, this.maxDelayMs);
    this.reconnectAttempts++;
    this.setStatus('offline', { retryInMs: Math.round(delay), attempt: this.reconnectAttempts });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  /** Closes for good (no reconnect). */
  close() {
    this.closedByUs = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.ws) this.ws.close(1000, 'bye');
    else this.setStatus('closed');
  }

  get connected() {
    return this.status === 'online';
  }

  /** Sends a frame now if the channel is ready, else queues it (seed 004's send). */
  send(data) {
    if (this.connected && this.ws?.readyState === this.ws?.OPEN) {
      this.ws.send(JSON.stringify(data));
      return true;
    }
    if (this.messageQueue.length >= this.maxQueue) {
      throw new Error(`the offline queue is full (${this.maxQueue} messages)`);
    }
    this.messageQueue.push(data);
    this.emit('queue', this.messageQueue.length);
    return false;
  }

  /** Sends a transient frame (typing, presence) only when connected; drops it otherwise. */
  sendNow(data) {
    if (this.connected && this.ws?.readyState === this.ws?.OPEN) {
      this.ws.send(JSON.stringify(data));
      return true;
    }
    return false;
  }

  sendMessage(content, threadId) {
    const frame = { type: 'message', content };
    if (threadId != null) frame.threadId = threadId;
    return this.send(frame);
  }

  setTyping(isTyping) {
    return this.sendNow({ type: 'typing', isTyping: !!isTyping });
  }

  setPresence(status) {
    return this.sendNow({ type: 'presence', status });
  }

  flushMessageQueue() {
    while (this.messageQueue.length > 0 && this.ws?.readyState === this.ws?.OPEN) {
      this.ws.send(JSON.stringify(this.messageQueue.shift()));
    }
    this.emit('queue', this.messageQueue.length);
  }

  handle(data) {
    switch (data.type) {
      case 'initial_state':
        this.onInitialState(data);
        break;
      case 'message': {
        const message = data.message ?? data;
        if (this.syncing && !data.replay) this.held.push(message);
        else this.deliver(message);
        break;
      }
      case 'sync':
        for (const m of data.messages ?? []) this.deliver(m);
        if (data.hasMore) this.requestSync();
        else this.endSync();
        break;
      case 'typing':
        if (data.isTyping) this.typing.set(data.userId, data.username ?? data.userId);
        else this.typing.delete(data.userId);
        this.emit('typing', this.typingUsers());
        break;
      case 'presence':
        if (data.status === 'offline') this.online.delete(data.userId);
        else this.online.set(data.userId, { userId: data.userId, username: data.username, status: data.status });
        this.emit('online', this.onlineUsers());
        break;
      case 'user_disconnected':
        this.online.delete(data.userId);
        this.typing.delete(data.userId);
        this.emit('online', this.onlineUsers());
        this.emit('typing', this.typingUsers());
        break;
      case 'error':
        if (this.syncing && String(data.message).startsWith('sync:')) {
          // The channel does not know our last message (its data was replaced): start over
          // from what initial_state showed.
          for (const m of this.initialMessages) this.deliver(m);
          this.endSync();
        }
        this.emit('error', data.message);
        break;
      default:
        break;
    }
    // Every frame as received (replays and duplicates included), for what this client does
    // not model.
    this.emit('frame', data);
  }

  onInitialState(data) {
    this.reconnectAttempts = 0;
    this.online.clear();
    for (const u of data.onlineUsers ?? []) {
      this.online.set(u.userId, { userId: u.userId, username: u.username, status: 'online' });
    }
    this.typing.clear();
    for (const userId of data.typing ?? []) {
      this.typing.set(userId, this.online.get(userId)?.username ?? userId);
    }
    this.setStatus('online');
    this.emit('online', this.onlineUsers());
    this.emit('typing', this.typingUsers());
    if (!this.everConnected) {
      this.everConnected = true;
      for (const m of data.messages ?? []) this.deliver(m);
    } else {
      // A reconnection: ask for exactly what we missed.
      this.initialMessages = data.messages ?? [];
      this.syncing = true;
      this.requestSync();
    }
    if (this.announcePresence) this.sendNow({ type: 'presence', status: 'online' });
    this.flushMessageQueue();
  }

  requestSync() {
    // Without a message yet, everything after sequence 0 was missed.
    const frame = this.lastMessageId === null
      ? { type: 'sync', after: 0 }
      : { type: 'sync', afterMessageId: this.lastMessageId };
    this.ws?.send(JSON.stringify(frame));
  }

  endSync() {
    this.syncing = false;
    this.initialMessages = [];
    const held = this.held.sort((a, b) => a.sequence - b.sequence);
    this.held = [];
    for (const m of held) this.deliver(m);
  }

  deliver(message) {
    if (!message || typeof message.id !== 'string' || this.seen.has(message.id)) return;
    this.seen.add(message.id);
    // Sorted by sequence; nearly always an append.
    let i = this.messages.length;
    while (i > 0 && this.messages[i - 1].sequence > message.sequence) i--;
    this.messages.splice(i, 0, message);
    if (message.sequence > this.lastSequence) {
      this.lastSequence = message.sequence;
      this.lastMessageId = message.id;
    }
    this.emit('message', message);
  }

  onlineUsers() {
    return [...this.online.values()].sort((a, b) => String(a.username).localeCompare(String(b.username)));
  }

  typingUsers() {
    return [...this.typing.entries()].map(([userId, username]) => ({ userId, username }));
  }
}

/** Seed 004's constructor, `new WaddleWebSocket(channelId, token)`, on the finished client. */
export class WaddleWebSocket extends WaddleClient {
  constructor(channelId, token, options = {}) {
    super({ ...options, channelId, token });
  }
}

// For pages that load this file as a module but use it from other scripts.
if (typeof globalThis !== 'undefined') {
  globalThis.WaddleClient = WaddleClient;
  globalThis.WaddleWebSocket = WaddleWebSocket;
}
