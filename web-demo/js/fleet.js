import { api, requireSession, Hub, OrderStore, bindIndicator, exposeDebug, isActive } from './hub.js';
import { $, el, shortId, uniqueLabels, nameEl, toast, errorText, setupHeader, STATUS_LABEL, sessionEnded } from './ui.js';
import { haversineM, validLat, validLng } from './geo.js';
import { drawMap } from './map.js';

const session = requireSession('admin');
if (session) main();

function main() {
  const token = session.token;
  const store = new OrderStore();
  const drivers = new Map(); // id -> Driver state; the newest `at` wins
  const finishedAt = new Map(); // order id -> when it left the active statuses
  let shops = [];
  const KEEP_FINISHED_MS = 20_000;

  setupHeader('admin');

  const hub = new Hub({
    token,
    topics: ['fleet'],
    onMessage,
    onUnauthorized: sessionEnded,
  });
  bindIndicator(hub, $('[data-testid="conn-indicator"]'));
  exposeDebug(hub, {
    store,
    drivers,
    /** The labels the map drew last, by kind: [{id, label}]. */
    get mapLabels() {
      return $('[data-testid="fleet-map"]').drawnLabels || null;
    },
  });
  hub.start();

  loadShops();
  setInterval(loadShops, 30_000);
  setInterval(() => {
    // drop finished orders after a moment on screen
    const now = Date.now();
    let changed = false;
    for (const [id, at] of finishedAt) {
      if (now - at > KEEP_FINISHED_MS) {
        finishedAt.delete(id);
        store.delete(id);
        changed = true;
      }
    }
    if (changed) schedule();
    else renderTables(); // keeps the "seen" column fresh
  }, 2000);
  window.addEventListener('resize', schedule);
  $('[data-testid="frame-select"]').addEventListener('change', schedule);

  async function loadShops() {
    try {
      ({ shops } = await api('GET', '/api/shops'));
      const select = $('[data-testid="frame-select"]');
      const keep = select.value;
      select.replaceChildren(
        el('option', { value: 'all' }, 'everything'),
        el('option', { value: 'active' }, 'drivers and active orders'),
        ...[...shops].sort((a, b) => a.name.localeCompare(b.name)).map((s) => el('option', { value: `shop:${s.id}` }, `around ${s.name}`)),
      );
      select.value = [...select.options].some((o) => o.value === keep) ? keep : 'all';
      schedule();
    } catch {
      /* retried on the next interval */
    }
  }

  function applyDriver(d) {
    if (!d || !d.id) return false;
    const held = drivers.get(d.id);
    if (held && held.at && d.at && Date.parse(d.at) < Date.parse(held.at)) return false;
    drivers.set(d.id, d);
    return true;
  }

  function trackFinished(o) {
    if (isActive(o)) finishedAt.delete(o.id);
    else if (!finishedAt.has(o.id)) finishedAt.set(o.id, Date.now());
  }

  function onMessage(msg) {
    if (msg.type === 'snapshot' && msg.topic === 'fleet') {
      const inSnapshot = new Set();
      for (const o of msg.orders || []) {
        inSnapshot.add(o.id);
        store.apply(o);
        trackFinished(o);
      }
      // Orders we still show as active but the snapshot no longer lists have finished.
      for (const o of store.all()) if (isActive(o) && !inSnapshot.has(o.id)) store.delete(o.id);
      for (const d of msg.drivers || []) applyDriver(d);
      schedule();
    } else if (msg.type === 'driver') {
      if (applyDriver(msg.driver)) schedule();
    } else if (msg.type === 'order' && msg.order) {
      if (store.apply(msg.order)) {
        trackFinished(msg.order);
        if (!shops.some((s) => s.id === msg.order.shop_id)) loadShops();
        schedule();
      }
    } else if (msg.type === 'error') {
      toast(`Hub: ${msg.message || msg.code}`, 'error');
    }
  }

  // ---------------------------------------------------------- drawing

  let queued = false;
  function schedule() {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      draw();
      renderTables();
    });
  }

  const hasPos = (p) => p && validLat(p.lat) && validLng(p.lng);

  function frame() {
    const mode = $('[data-testid="frame-select"]').value;
    const ds = [...drivers.values()].filter(hasPos);
    const orders = store.all();
    if (mode === 'active') {
      const pts = ds.filter((d) => d.state !== 'offline');
      for (const o of orders) {
        if (hasPos(o.delivery)) pts.push(o.delivery);
        const s = shops.find((x) => x.id === o.shop_id);
        if (s) pts.push(s);
      }
      return pts;
    }
    if (mode.startsWith('shop:')) {
      const s = shops.find((x) => x.id === mode.slice(5));
      if (!s) return null;
      const pts = [s, ...ds.filter((d) => haversineM(s, d) < 5000)];
      for (const o of orders) if (o.shop_id === s.id && hasPos(o.delivery)) pts.push(o.delivery);
      return pts;
    }
    return null; // everything
  }

  /** Every driver's label, unique on this page: the name (plus the id's tail for namesakes). */
  const driverLabels = () => uniqueLabels([...drivers.values()]);

  /** What a driver is doing, in words: free, to shop, carrying, unavailable, offline. */
  function doing(d) {
    if (d.leg === 'carrying') return d.state === 'offline' ? 'offline, carrying' : 'carrying';
    if (d.leg === 'to_shop') return d.state === 'offline' ? 'offline, to shop' : 'to shop';
    return d.state;
  }

  function draw() {
    const canvas = $('[data-testid="fleet-map"]');
    const labels = driverLabels();
    drawMap(canvas, {
      shops,
      drivers: [...drivers.values()].map((d) => ({ ...d, label: labels.get(d.id) })),
      orders: store.all().filter((o) => !['delivered', 'rejected', 'cancelled', 'delivery_failed'].includes(o.status) || finishedAt.has(o.id)),
      frame: frame(),
    });
    const counts = { free: 0, busy: 0, unavailable: 0, offline: 0, carrying: 0 };
    for (const d of drivers.values()) {
      counts[d.state] = (counts[d.state] || 0) + 1;
      if (d.state === 'busy' && d.leg === 'carrying') counts.carrying += 1;
    }
    const active = store.all().filter(isActive).length;
    const summary = $('[data-testid="fleet-summary"]');
    summary.textContent = `${shops.length} shops · ${drivers.size} drivers (${counts.free} free, ${counts.busy - counts.carrying} to shop, ${counts.carrying} carrying, ${counts.unavailable} unavailable, ${counts.offline} offline) · ${active} active orders`;
    Object.assign(summary.dataset, { free: String(counts.free), busy: String(counts.busy), active: String(active) });
  }

  const STATE_ORDER = { busy: 0, free: 1, unavailable: 2, offline: 3 };

  function ago(iso) {
    if (!iso) return '—';
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    return s < 60 ? `${s}s` : s < 3600 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
  }

  function renderTables() {
    const dBody = $('[data-testid="fleet-drivers"] tbody');
    const labels = driverLabels();
    const list = [...drivers.values()]
      .sort((a, b) => (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9) || labels.get(a.id).localeCompare(labels.get(b.id)))
      .slice(0, 60);
    dBody.replaceChildren(
      ...list.map((d) =>
        el('tr', { testid: 'fleet-driver', dataset: { driverId: d.id, state: d.state, leg: d.leg || '' } },
          el('td', {}, nameEl(labels.get(d.id), d.id, { testid: 'driver-label' })),
          el('td', { testid: 'driver-doing' }, el('span', { class: `dot state-${d.state}${d.leg ? ` leg-${d.leg}` : ''}` }), doing(d)),
          el('td', {}, d.order_id ? nameEl(store.get(d.order_id) ? `#${store.get(d.order_id).number}` : `order ${shortId(d.order_id)}`, d.order_id) : '—'),
          el('td', { class: 'muted' }, ago(d.at)))),
    );
    if (!list.length) dBody.replaceChildren(el('tr', {}, el('td', { colspan: '4', class: 'empty' }, 'No drivers yet')));

    const oBody = $('[data-testid="fleet-orders"] tbody');
    const orders = store.all().sort((a, b) => b.number - a.number).slice(0, 60);
    oBody.replaceChildren(
      ...orders.map((o) =>
        el('tr', { testid: 'fleet-order', dataset: { orderId: o.id, status: o.status, version: String(o.version) }, class: isActive(o) ? '' : 'finished' },
          el('td', {}, nameEl(`#${o.number}`, o.id)),
          el('td', {}, STATUS_LABEL[o.status] || o.status),
          el('td', {}, nameEl(o.shop_name || shops.find((s) => s.id === o.shop_id)?.name, o.shop_id, { fallback: 'shop' })),
          el('td', {}, o.driver_id ? nameEl(labels.get(o.driver_id) || o.driver_name, o.driver_id, { fallback: 'driver' }) : '—'))),
    );
    if (!orders.length) oBody.replaceChildren(el('tr', {}, el('td', { colspan: '4', class: 'empty' }, 'No active orders')));
  }

  // ---------------------------------------------------------- accounts

  function remember(kind, name, id, code, phone) {
    $('[data-testid="created-accounts"]').prepend(
      el('li', { testid: 'created-account', dataset: { kind, id, code } },
        el('strong', { title: id }, `${kind} ${name}`),
        phone ? [' · signs in with ', el('code', {}, phone)] : kind === 'driver' ? ' · no phone: signs in with the id ' : null,
        kind === 'driver' && !phone ? el('code', {}, id) : null,
        ' · code ', el('code', {}, code)),
    );
  }

  $('[data-testid="create-shop"]').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = ev.currentTarget;
    const v = (n) => f.elements.namedItem(n).value.trim();
    const body = { name: v('sname'), lat: Number(v('lat').replace(',', '.')), lng: Number(v('lng').replace(',', '.')) };
    if (v('address')) body.address = v('address');
    try {
      const r = await api('POST', '/api/admin/shops', { token, body });
      remember('shop', r.shop.name, r.shop.id, r.login_code, null);
      f.reset();
      loadShops();
    } catch (e) {
      toast(errorText(e), 'error');
    }
  });

  $('[data-testid="create-driver"]').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = ev.currentTarget;
    const body = { name: f.elements.namedItem('dname').value.trim() };
    const phone = f.elements.namedItem('phone').value.trim();
    if (phone) body.phone = phone;
    try {
      const r = await api('POST', '/api/admin/drivers', { token, body });
      remember('driver', r.driver.name, r.driver.id, r.login_code, r.driver.phone);
      f.reset();
    } catch (e) {
      toast(errorText(e), 'error');
    }
  });
}
