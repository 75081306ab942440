// Shared client plumbing for every page of the demo:
//   * the session (token, role, subject) kept in sessionStorage,
//   * REST calls with the hub's error shape,
//   * one WebSocket connection with auth, (re)subscription, reconnect with
//     exponential backoff and jitter, heartbeat, and request/answer matching by `ref`,
//   * the version rule for orders (apply only a newer version),
//   * the connection indicator and the `window.hubDebug` test hooks.

const SESSION_KEY = 'dispatchHub.session';

// ---------------------------------------------------------------- session

export function getSession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY)) || null;
  } catch {
    return null;
  }
}

export function setSession(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

export function clearSession() {
  sessionStorage.removeItem(SESSION_KEY);
}

/** The page for a role. */
export function pageFor(role) {
  return { vendor: 'vendor.html', driver: 'driver.html', buyer: 'buyer.html', admin: 'fleet.html' }[role] || 'index.html';
}

/** Returns the session if it has `role`; otherwise sends the browser to the sign-in page. */
export function requireSession(role) {
  const s = getSession();
  if (!s || s.role !== role || !s.token) {
    location.replace(`index.html?need=${encodeURIComponent(role)}#${role}`);
    return null;
  }
  return s;
}

/** Revokes the token (not for the admin token, which is configuration) and returns to sign-in. */
export async function logout() {
  const s = getSession();
  if (s && s.token && s.role !== 'admin') {
    try {
      await api('POST', '/api/auth/logout', { token: s.token });
    } catch {
      /* signing out locally is enough when the hub is unreachable */
    }
  }
  clearSession();
  location.href = 'index.html';
}

// ---------------------------------------------------------------- REST

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const e = (body && body.error) || {};
    super(e.message || (status ? `HTTP ${status}` : 'the hub could not be reached'));
    this.status = status;
    this.code = e.code || (status ? `http_${status}` : 'network');
    this.order = e.order || null;
    this.attemptsLeft = e.attempts_left ?? null;
    this.retryAfter = retryAfter ? Number(retryAfter) : null;
    this.body = body;
  }
}

/** Calls the REST API on the same origin. Resolves with the parsed body (null for 204). */
export async function api(method, path, { token, body, headers = {} } = {}) {
  const h = { ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (token) h.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, null);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) throw new ApiError(res.status, data, res.headers.get('Retry-After'));
  return data;
}

// ---------------------------------------------------------------- hub settings

const CONFIG_KEY = 'dispatchHub.config';

function cachedConfig() {
  try {
    return JSON.parse(localStorage.getItem(CONFIG_KEY)) || {};
  } catch {
    return {};
  }
}

/** The hub's public settings (`GET /api/config`), e.g. `currency`; read by `loadConfig()`. */
export let hubConfig = cachedConfig();

/**
 * Reads `GET /api/config` (and remembers it, so a page opened while the hub is unreachable
 * still shows amounts in the last known currency). Resolves within `timeoutMs` either way.
 */
export async function loadConfig(timeoutMs = 3000) {
  const read = api('GET', '/api/config').then((c) => {
    if (c && typeof c === 'object') {
      hubConfig = c;
      localStorage.setItem(CONFIG_KEY, JSON.stringify(c));
    }
  });
  await Promise.race([read.catch(() => {}), new Promise((r) => setTimeout(r, timeoutMs))]);
  return hubConfig;
}

/** A random id usable as an Idempotency-Key, also outside secure contexts. */
export function randomId() {
  if (globalThis.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// ---------------------------------------------------------------- orders

export const ACTIVE_STATUSES = ['pending', 'accepted', 'ready', 'assigned', 'picked_up'];
export const isActive = (order) => ACTIVE_STATUSES.includes(order.status);

/**
 * Orders by id, guarded by the protocol's one rule: an order is applied only when its
 * `version` is greater than the version already held, so a stale message (a late REST
 * answer, a replayed snapshot, an overlapping topic) can never roll the screen back.
 */
export class OrderStore {
  constructor() {
    this.orders = new Map();
  }

  /** Returns true if the order was newer and has been applied. */
  apply(order) {
    if (!order || !order.id || typeof order.version !== 'number') return false;
    const held = this.orders.get(order.id);
    if (held && held.version >= order.version) return false;
    this.orders.set(order.id, order);
    return true;
  }

  get(id) {
    return this.orders.get(id);
  }

  has(id) {
    return this.orders.has(id);
  }

  delete(id) {
    this.orders.delete(id);
  }

  all() {
    return [...this.orders.values()];
  }
}

// ---------------------------------------------------------------- socket

export class HubError extends Error {
  constructor(msg) {
    super(msg.message || msg.code || 'error');
    this.code = msg.code;
    this.order = msg.order || null;
    this.attemptsLeft = msg.attempts_left ?? null;
    this.msg = msg;
  }
}

export function defaultWsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const WELCOME_TIMEOUT_MS = 12_000;
const HEARTBEAT_EVERY_MS = 15_000;
const DEAD_AFTER_MS = 40_000;
const STABLE_AFTER_MS = 10_000;

/**
 * One authenticated socket to the hub that survives network drops.
 *
 * States: `connecting` (first attempt), `live` (authenticated and every topic's snapshot
 * received), `reconnecting` (dropped; a retry is scheduled or running), `unauthorized`
 * (the token is no longer valid; no retry), `closed` (stopped by the page).
 */
export class Hub {
  constructor({ token, topics = [], url, onMessage, onWelcome, onLive, onStateChange, onUnauthorized } = {}) {
    this.token = token;
    this.url = url || defaultWsUrl();
    this.topics = new Set(topics);
    this.onMessage = onMessage || (() => {});
    this.onWelcome = onWelcome || (() => {});
    this.onLive = onLive || (() => {});
    this.onStateChange = onStateChange || (() => {});
    this.onUnauthorized = onUnauthorized || (() => {});

    this.state = 'idle';
    this.ws = null;
    this.authed = false;
    this.welcome = null;
    this.attempt = 0; // consecutive failed attempts, drives the backoff
    this.connects = 0; // welcomes received
    this.reconnects = 0; // welcomes received after the first one
    this.nextRetryAt = null;
    this.lastClose = null;
    this.liveAt = null;
    this.lastMessageAt = 0;
    this.stopped = false;
    this.suspended = false;

    this.seq = 0;
    this.pending = new Map(); // ref -> {resolve, reject, timer}
    this.subRefs = new Map(); // ref -> topic
    this.awaiting = new Set(); // topics whose snapshot has not arrived yet
    this.log = []; // the last frames, newest last, for debugging

    this.retryTimer = null;
    this.welcomeTimer = null;
    this.heartbeatTimer = null;
    this.listeners = new Set();

    window.addEventListener('offline', () => {
      if (this.ws) this._dropped(this.ws, { code: 1006, reason: 'browser offline' });
    });
    window.addEventListener('online', () => {
      if (!this.ws && !this.stopped && !this.suspended && this.state !== 'unauthorized') {
        this.attempt = 0;
        this._connect();
      }
    });
  }

  start() {
    this.stopped = false;
    if (!this.ws) this._connect();
    return this;
  }

  /** Closes for good (page leaving, logout). */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    if (ws) {
      this._dropped(ws, { code: 1000, reason: 'client stop' });
    }
    this._setState('closed');
  }

  /** Test hook: drop the connection as a network failure would; a reconnect follows. */
  kill() {
    if (this.ws) this._dropped(this.ws, { code: 1006, reason: 'killed' });
  }

  /** Test hook: hold reconnects back until resume(). */
  suspend() {
    this.suspended = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  resume() {
    this.suspended = false;
    if (!this.ws && !this.stopped) this._connect();
  }

  /** Adds a topic; it is subscribed now if authenticated, and after every reconnect. */
  subscribe(topic) {
    if (this.topics.has(topic)) return;
    this.topics.add(topic);
    if (this.authed) this._subscribeNow(topic);
  }

  unsubscribe(topic) {
    if (!this.topics.delete(topic)) return;
    this.awaiting.delete(topic);
    if (this.authed) this.send({ type: 'unsubscribe', topic, ref: this._ref('u') });
  }

  /** Sends a frame if the socket is authenticated; returns whether it was sent. */
  send(msg) {
    if (!this.authed || !this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this._raw(msg);
    return true;
  }

  /** Sends a frame with a fresh `ref` and resolves with the answer carrying it (rejects on `error`). */
  request(msg, timeoutMs = 10_000) {
    return new Promise((resolve, reject) => {
      if (!this.authed) {
        reject(new HubError({ code: 'not_connected', message: 'not connected to the hub' }));
        return;
      }
      const ref = this._ref('r');
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new HubError({ code: 'timeout', message: 'the hub did not answer in time' }));
      }, timeoutMs);
      this.pending.set(ref, { resolve, reject, timer });
      this.send({ ...msg, ref });
    });
  }

  /** Subscribe to state changes; returns an unsubscribe function. */
  onState(fn) {
    this.listeners.add(fn);
    fn(this.state, this);
    return () => this.listeners.delete(fn);
  }

  // ------------------------------------------------------------ internals

  _ref(prefix) {
    this.seq += 1;
    return `${prefix}${this.seq}`;
  }

  _setState(state) {
    if (this.state === state) {
      for (const fn of this.listeners) fn(state, this);
      return;
    }
    this.state = state;
    this.onStateChange(state, this);
    for (const fn of this.listeners) fn(state, this);
  }

  _raw(msg) {
    const text = JSON.stringify(msg);
    this._record('out', msg.type === 'auth' ? { type: 'auth', token: '…' } : msg);
    this.ws.send(text);
  }

  _record(dir, msg) {
    this.log.push({ dir, at: Date.now(), msg });
    if (this.log.length > 200) this.log.splice(0, this.log.length - 200);
  }

  _connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.stopped || this.suspended || this.ws) return;
    this.nextRetryAt = null;
    this._setState(this.connects === 0 && this.attempt === 0 ? 'connecting' : 'reconnecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws === ws) this._raw({ type: 'auth', token: this.token });
    };
    ws.onmessage = (ev) => {
      if (this.ws === ws) this._receive(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this._dropped(ws, ev);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
    this.welcomeTimer = setTimeout(() => {
      if (this.ws === ws && !this.authed) this._dropped(ws, { code: 1006, reason: 'no welcome in time' });
    }, WELCOME_TIMEOUT_MS);
  }

  _dropped(ws, ev) {
    if (this.ws !== ws) return;
    this.ws = null;
    const wasLiveFor = this.liveAt ? Date.now() - this.liveAt : 0;
    this.authed = false;
    this.liveAt = null;
    clearTimeout(this.welcomeTimer);
    clearInterval(this.heartbeatTimer);
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(1000);
    } catch {
      /* already closing */
    }
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new HubError({ code: 'disconnected', message: 'the connection to the hub dropped' }));
    }
    this.pending.clear();
    this.subRefs.clear();
    this.awaiting.clear();
    this.lastClose = { code: ev.code, reason: ev.reason || '', at: Date.now() };
    this._record('close', this.lastClose);
    if (this.stopped) return;
    if (wasLiveFor > STABLE_AFTER_MS) this.attempt = 0;
    if (ev.code === 4401) {
      this._checkToken();
      return;
    }
    this._scheduleReconnect();
  }

  async _checkToken() {
    this._setState('reconnecting');
    try {
      await api('GET', '/api/me', { token: this.token });
    } catch (e) {
      if (e.status === 401) {
        this._setState('unauthorized');
        this.onUnauthorized();
        return;
      }
    }
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    const base = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.5 + Math.random()));
    this.attempt += 1;
    this.nextRetryAt = Date.now() + delay;
    this._setState('reconnecting');
    if (this.suspended || this.stopped) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }

  _receive(data) {
    this.lastMessageAt = Date.now();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    this._record('in', msg);

    if (msg.type === 'welcome') {
      clearTimeout(this.welcomeTimer);
      this.authed = true;
      this.welcome = msg;
      this.connects += 1;
      if (this.connects > 1) this.reconnects += 1;
      this._startHeartbeat();
      this.onWelcome(msg, this);
      if (this.topics.size === 0) this._goLive();
      else for (const topic of this.topics) this._subscribeNow(topic);
      return;
    }
    if (msg.type === 'pong') return;

    let subscribeAnswer = null;
    if (msg.ref && this.subRefs.has(msg.ref)) {
      subscribeAnswer = this.subRefs.get(msg.ref);
      this.subRefs.delete(msg.ref);
    }
    let answeredError = false;
    if (msg.ref && this.pending.has(msg.ref)) {
      const p = this.pending.get(msg.ref);
      this.pending.delete(msg.ref);
      clearTimeout(p.timer);
      if (msg.type === 'error') {
        answeredError = true; // the caller of request() handles it
        p.reject(new HubError(msg));
      } else p.resolve(msg);
    }
    try {
      if (!answeredError) this.onMessage(msg, this);
    } finally {
      if (subscribeAnswer !== null) {
        this.awaiting.delete(subscribeAnswer);
        if (this.awaiting.size === 0 && this.state !== 'live') this._goLive();
      }
    }
  }

  _subscribeNow(topic) {
    const ref = this._ref('s');
    this.subRefs.set(ref, topic);
    this.awaiting.add(topic);
    this.send({ type: 'subscribe', topic, ref });
  }

  _goLive() {
    this.liveAt = Date.now();
    this._setState('live');
    this.onLive(this);
  }

  _startHeartbeat() {
    clearInterval(this.heartbeatTimer);
    const ws = this.ws;
    this.heartbeatTimer = setInterval(() => {
      if (this.ws !== ws) return;
      const quiet = Date.now() - this.lastMessageAt;
      if (quiet > DEAD_AFTER_MS) this._dropped(ws, { code: 1006, reason: 'heartbeat timeout' });
      else if (quiet > HEARTBEAT_EVERY_MS) this.send({ type: 'ping' });
    }, HEARTBEAT_EVERY_MS / 3);
  }
}

// ---------------------------------------------------------------- indicator + test hooks

const STATE_TEXT = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  unauthorized: 'Signed out',
  closed: 'Disconnected',
};

/** Renders the hub's state into `el` (the header's connection indicator) and keeps it current. */
export function bindIndicator(hub, el) {
  const render = () => {
    el.dataset.state = hub.state;
    el.className = `conn conn-${hub.state}`;
    let text = STATE_TEXT[hub.state] || hub.state;
    if (hub.state === 'reconnecting') {
      if (hub.suspended) text = 'Reconnecting… (paused)';
      else if (hub.nextRetryAt && !hub.ws) {
        const s = Math.max(0, Math.ceil((hub.nextRetryAt - Date.now()) / 1000));
        text = `Reconnecting… retry in ${s}s`;
      }
    }
    el.querySelector('.conn-text').textContent = text;
    el.title = hub.lastClose ? `last close: ${hub.lastClose.code} ${hub.lastClose.reason}`.trim() : '';
  };
  if (!el.querySelector('.conn-text')) {
    el.innerHTML = '<span class="conn-dot" aria-hidden="true"></span><span class="conn-text"></span>';
  }
  el.setAttribute('role', 'status');
  el.setAttribute('aria-live', 'polite');
  hub.onState(render);
  setInterval(() => {
    if (hub.state === 'reconnecting') render();
  }, 500);
}

/** Exposes hooks for browser tests and for poking at the demo from the console. */
export function exposeDebug(hub, extra = {}) {
  const debug = {
    hub,
    get socket() {
      return hub.ws;
    },
    get state() {
      return hub.state;
    },
    get reconnects() {
      return hub.reconnects;
    },
    get connects() {
      return hub.connects;
    },
    get attempts() {
      return hub.attempt;
    },
    get log() {
      return hub.log.slice();
    },
    kill: () => hub.kill(),
    suspend: () => hub.suspend(),
    resume: () => hub.resume(),
    /** Feeds a frame to the page as if the hub had sent it. */
    inject: (msg) => hub._receive(JSON.stringify(msg)),
  };
  // Copy descriptors, not values, so the page's getters stay live.
  Object.defineProperties(debug, Object.getOwnPropertyDescriptors(extra));
  window.hubDebug = debug;
  return debug;
}
