// Small DOM and formatting helpers shared by the pages.

import { api, getSession, setSession, clearSession, logout, hubConfig } from './hub.js';

/** el('div', {class: 'x', dataset: {testid: 'y'}, onclick}, child, 'text', …) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'testid') node.dataset.testid = v;
    else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'text') node.textContent = v;
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export const $ = (sel, root = document) => root.querySelector(sel);

const moneyFormats = new Map(); // currency -> Intl.NumberFormat (or null if unknown)

/**
 * An amount of `cents` (hundredths of the hub's currency, `GET /api/config`) as the browser
 * writes money in its locale, e.g. "€3.50" or "3,50 €". Always two decimals: that is what
 * the hub stores, whatever the currency.
 */
export function money(cents) {
  const amount = Number(cents || 0) / 100;
  const currency = hubConfig.currency;
  if (!currency) return amount.toFixed(2);
  if (!moneyFormats.has(currency)) {
    let f = null;
    try {
      f = new Intl.NumberFormat(undefined, { style: 'currency', currency, minimumFractionDigits: 2, maximumFractionDigits: 2 });
    } catch {
      /* a code this browser does not know: written out below */
    }
    moneyFormats.set(currency, f);
  }
  const f = moneyFormats.get(currency);
  return f ? f.format(amount) : `${amount.toFixed(2)} ${currency}`;
}

/** An amount as an element (class `money`, `data-cents`), for tests and styling. */
export function moneyEl(cents, attrs = {}) {
  return el('span', { ...attrs, class: `money${attrs.class ? ` ${attrs.class}` : ''}`, dataset: { ...(attrs.dataset || {}), cents: String(cents) } }, money(cents));
}

/**
 * A short stand-in for an id nobody has named: its random tail. UUIDv7 ids *start* with a
 * millisecond timestamp, so their first digits are the same for everything created within
 * a minute; the last digits are random.
 */
export function shortId(id) {
  return id ? `…${String(id).slice(-6)}` : '—';
}

/**
 * Labels for a set of named things that are unique on the screen: the name, and where two
 * share a name, the name plus the id's random tail. `items` = [{id, name}].
 */
export function uniqueLabels(items, fallback = 'driver') {
  const count = new Map();
  for (const i of items) if (i.name) count.set(i.name, (count.get(i.name) || 0) + 1);
  const labels = new Map();
  for (const i of items) {
    if (!i.name) labels.set(i.id, `${fallback} ${shortId(i.id)}`);
    else labels.set(i.id, count.get(i.name) > 1 ? `${i.name} (${String(i.id).slice(-4)})` : i.name);
  }
  return labels;
}

/** A name (or `fallback`) with the full id on hover. */
export function nameEl(name, id, { fallback, testid, tag = 'span' } = {}) {
  return el(tag, { title: id || undefined, testid, class: 'name', dataset: id ? { id } : undefined }, name || fallback || shortId(id));
}

export function time(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export const STATUS_LABEL = {
  pending: 'Pending',
  accepted: 'Accepted',
  ready: 'Ready',
  assigned: 'Driver assigned',
  picked_up: 'Picked up',
  delivered: 'Delivered',
  rejected: 'Rejected',
  cancelled: 'Cancelled',
  delivery_failed: 'Delivery failed',
};

export function statusBadge(status) {
  return el('span', { class: `badge status-${status}`, testid: 'status-badge', dataset: { status } }, STATUS_LABEL[status] || status);
}

let toastBox = null;

/** A short message in the corner; kind is info | success | error. */
export function toast(message, kind = 'info', ms = 5000) {
  if (!toastBox) {
    toastBox = el('div', { class: 'toasts', 'aria-live': 'polite' });
    document.body.append(toastBox);
  }
  const t = el('div', { class: `toast toast-${kind}`, testid: 'toast', role: kind === 'error' ? 'alert' : 'status', title: 'Click to dismiss' }, message);
  toastBox.append(t);
  const dismiss = () => {
    t.classList.add('toast-out');
    setTimeout(() => t.remove(), 400);
  };
  const timer = setTimeout(dismiss, ms);
  t.addEventListener('click', (ev) => {
    if (ev.target.closest('a')) return;
    clearTimeout(timer);
    dismiss();
  });
  return t;
}

/** Human text for an ApiError / HubError. */
export function errorText(e) {
  if (!e) return 'Something went wrong';
  if (e.code === 'network') return 'The hub could not be reached. Check the connection and retry.';
  if (e.code === 'invalid_otp') {
    const left = e.attemptsLeft;
    return `Wrong code${left !== null && left !== undefined ? ` — ${left} attempt${left === 1 ? '' : 's'} left` : ''}.`;
  }
  if (e.code === 'otp_locked') return 'Too many wrong codes: this order can no longer be delivered with a code.';
  if (e.code === 'rate_limited') return `Too many attempts${e.retryAfter ? `; try again in ${e.retryAfter} s` : ''}.`;
  if (e.code === 'version_conflict' || e.code === 'invalid_transition') {
    const o = e.order;
    return o
      ? `Order #${o.number} changed meanwhile: it is now ${STATUS_LABEL[o.status] || o.status} (v${o.version}). Check it and try again.`
      : e.message;
  }
  return e.message || e.code || 'Something went wrong';
}

/** Fills the page header's "who" label (the session's name, the full id on hover) and wires the sign-out button. */
export function setupHeader(label) {
  const s = getSession();
  const who = $('[data-testid="whoami"]');
  if (who && s) {
    who.textContent = label || (s.name ? `${s.name} (${s.role})` : s.role);
    if (s.subject_id) who.title = `${s.role} ${s.subject_id}`;
    // A session from before names were kept: ask the hub once.
    if (!label && !s.name && s.role !== 'admin') {
      api('GET', '/api/me', { token: s.token })
        .then((me) => {
          if (!me || !me.name) return;
          setSession({ ...s, name: me.name });
          who.textContent = `${me.name} (${s.role})`;
        })
        .catch(() => {});
    }
  }
  const btn = $('[data-testid="logout"]');
  if (btn) btn.addEventListener('click', () => logout());
}

/** The hub refused our token (expired or revoked): forget it and offer to sign in again. */
export function sessionEnded() {
  const role = getSession()?.role || '';
  clearSession();
  toast(el('span', {}, 'Your session has ended. ', el('a', { href: `index.html#${role}`, class: 'toast-link', testid: 'sign-in-again' }, 'Sign in again')), 'error', 3_600_000);
}
