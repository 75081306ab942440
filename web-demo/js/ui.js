// Small DOM and formatting helpers shared by the pages.

import { getSession, clearSession, logout } from './hub.js';

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

export function money(cents) {
  return (Number(cents || 0) / 100).toFixed(2);
}

export function shortId(id) {
  return id ? `${String(id).slice(0, 8)}…` : '—';
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
  const t = el('div', { class: `toast toast-${kind}`, testid: 'toast', role: kind === 'error' ? 'alert' : 'status' }, message);
  toastBox.append(t);
  setTimeout(() => {
    t.classList.add('toast-out');
    setTimeout(() => t.remove(), 400);
  }, ms);
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

/** Fills the page header's "who" label and wires the sign-out button. */
export function setupHeader(label) {
  const s = getSession();
  const who = $('[data-testid="whoami"]');
  if (who && s) who.textContent = label || `${s.role}${s.subject_id ? ` ${shortId(s.subject_id)}` : ''}`;
  const btn = $('[data-testid="logout"]');
  if (btn) btn.addEventListener('click', () => logout());
}

/** The hub refused our token (expired or revoked): forget it and offer to sign in again. */
export function sessionEnded() {
  const role = getSession()?.role || '';
  clearSession();
  toast(el('span', {}, 'Your session has ended. ', el('a', { href: `index.html#${role}`, class: 'toast-link', testid: 'sign-in-again' }, 'Sign in again')), 'error', 3_600_000);
}
