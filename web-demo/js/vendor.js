import { api, requireSession, loadConfig, hubConfig, Hub, OrderStore, bindIndicator, exposeDebug, isActive } from './hub.js';
import { $, el, money, moneyEl, nameEl, time, toast, errorText, setupHeader, statusBadge, sessionEnded } from './ui.js';
import { haversineM, fmtDistance } from './geo.js';

const session = requireSession('vendor');
if (session) loadConfig().finally(main);

function main() {
  const shopId = session.subject_id;
  const token = session.token;
  const store = new OrderStore();
  const busy = new Set(); // order ids with a command in flight
  let shop = null;
  let firstSnapshot = true;

  setupHeader();
  if (hubConfig.currency) $('[data-testid="product-price"]').placeholder = `Price in ${hubConfig.currency}`;

  const hub = new Hub({
    token,
    topics: [`shop:${shopId}`],
    onMessage,
    onUnauthorized: sessionEnded,
  });
  bindIndicator(hub, $('[data-testid="conn-indicator"]'));
  exposeDebug(hub, { store });
  hub.start();


  // ---------------------------------------------------------- data

  async function loadShop() {
    try {
      const { shops } = await api('GET', '/api/shops');
      shop = shops.find((s) => s.id === shopId) || null;
      $('[data-testid="shop-name"]').textContent = shop ? shop.name : session.name || 'your shop';
      $('[data-testid="shop-name"]').title = shopId;
      document.title = `dispatch-hub — ${shop ? shop.name : 'shop'}`;
      render();
    } catch {
      /* the name is cosmetic */
    }
  }

  /** Recent orders over REST, so finished ones show in "Done" (snapshots hold active orders only). */
  async function loadRecent() {
    try {
      const { orders } = await api('GET', '/api/orders?limit=50', { token });
      let changed = false;
      for (const o of orders) changed = store.apply(o) || changed;
      if (changed) render();
    } catch (e) {
      if (e.status === 401) sessionEnded();
    }
  }

  function onMessage(msg) {
    if (msg.type === 'snapshot' && msg.topic === `shop:${shopId}`) {
      const inSnapshot = new Set();
      const fresh = [];
      for (const o of msg.orders || []) {
        inSnapshot.add(o.id);
        const known = store.has(o.id);
        if (store.apply(o) && !known && !firstSnapshot && o.status === 'pending') fresh.push(o);
      }
      for (const o of fresh) announce(o);
      // Orders we show as active but that are missing from the snapshot finished while we
      // were away: fetch them so the board does not keep a stale card.
      for (const o of store.all()) {
        if (isActive(o) && !inSnapshot.has(o.id)) refresh(o.id);
      }
      firstSnapshot = false;
      render();
    } else if (msg.type === 'order' && msg.order && msg.order.shop_id === shopId) {
      const known = store.has(msg.order.id);
      if (store.apply(msg.order)) {
        if (msg.event && msg.event.kind === 'created' && !known) announce(msg.order);
        render();
      }
    } else if (msg.type === 'error') {
      toast(`Hub: ${msg.message || msg.code}`, 'error');
    }
  }

  async function refresh(id) {
    try {
      const o = await api('GET', `/api/orders/${id}`, { token });
      if (store.apply(o)) render();
    } catch (e) {
      if (e.status === 404) {
        store.delete(id);
        render();
      }
    }
  }

  function announce(order) {
    const n = order.items.reduce((a, i) => a + i.quantity, 0);
    toast(`New order #${order.number} — ${n} item${n === 1 ? '' : 's'}, ${money(order.total_cents)}`, 'success', 8000);
  }

  // ---------------------------------------------------------- commands

  async function act(order, action) {
    if (busy.has(order.id)) return;
    busy.add(order.id);
    render();
    const cmd = { type: 'transition', order_id: order.id, action, expected_version: order.version };
    try {
      let updated;
      if (hub.authed) {
        const ack = await hub.request(cmd);
        updated = ack.order;
      } else {
        updated = await api('POST', `/api/orders/${order.id}/transitions`, {
          token,
          body: { action, expected_version: order.version },
        });
      }
      store.apply(updated);
    } catch (e) {
      if (e.order) store.apply(e.order);
      toast(errorText(e), 'error', 8000);
    } finally {
      busy.delete(order.id);
      render();
    }
  }

  // ---------------------------------------------------------- rendering

  const columns = {};
  for (const c of document.querySelectorAll('[data-column]')) {
    columns[c.dataset.column] = { root: c, cards: c.querySelector('.cards'), count: c.querySelector('.count') };
  }
  const cardEls = new Map(); // id -> {el, key}

  function columnOf(o) {
    return columns[o.status] ? o.status : 'done';
  }

  function render() {
    const byColumn = {};
    for (const k of Object.keys(columns)) byColumn[k] = [];
    for (const o of store.all()) byColumn[columnOf(o)].push(o);
    byColumn.done.sort((a, b) => b.number - a.number);
    byColumn.done = byColumn.done.slice(0, 30);
    const shown = new Set();
    for (const [k, list] of Object.entries(byColumn)) {
      if (k !== 'done') list.sort((a, b) => a.number - b.number);
      const col = columns[k];
      col.count.textContent = String(list.length);
      const nodes = list.map((o) => {
        shown.add(o.id);
        const key = `${o.version}:${busy.has(o.id)}:${shop ? 1 : 0}`;
        const cached = cardEls.get(o.id);
        if (cached && cached.key === key) return cached.el;
        const node = card(o);
        cardEls.set(o.id, { el: node, key });
        return node;
      });
      // Keep existing nodes in place where possible, so buttons under the pointer stay put.
      const current = [...col.cards.children];
      if (current.length !== nodes.length || current.some((n, i) => n !== nodes[i])) col.cards.replaceChildren(...nodes);
      if (!list.length) col.cards.replaceChildren(el('p', { class: 'empty' }, 'No orders'));
    }
    for (const id of [...cardEls.keys()]) if (!shown.has(id)) cardEls.delete(id);
  }

  function card(o) {
    const inFlight = busy.has(o.id);
    const btn = (label, action, testid, cls = '') =>
      el('button', { type: 'button', class: cls, testid, disabled: inFlight, onclick: () => act(o, action) }, label);
    const actions = [];
    if (o.status === 'pending') actions.push(btn('Accept', 'accept', 'btn-accept', 'primary'), btn('Reject', 'reject', 'btn-reject', 'danger'));
    if (o.status === 'accepted') actions.push(btn('Mark ready', 'mark_ready', 'btn-ready', 'primary'), btn('Cancel', 'cancel', 'btn-cancel', 'danger'));
    const dist = shop && o.delivery ? fmtDistance(haversineM(shop, o.delivery)) : null;
    return el(
      'article',
      {
        class: `order-card status-${o.status}${inFlight ? ' busy' : ''}`,
        testid: 'order-card',
        dataset: { orderId: o.id, number: String(o.number), status: o.status, version: String(o.version) },
      },
      el('header', {}, el('strong', { class: 'order-number', testid: 'order-number' }, `#${o.number}`), statusBadge(o.status),
        el('span', { class: 'version', testid: 'order-version', title: 'order version' }, `v${o.version}`)),
      el('ul', { class: 'items' }, o.items.map((i) => el('li', {}, el('span', {}, `${i.quantity}× ${i.name}`), moneyEl(i.unit_price_cents * i.quantity)))),
      el('div', { class: 'total' }, el('span', {}, 'Total'), el('strong', {}, moneyEl(o.total_cents, { testid: 'order-total' }))),
      el('div', { class: 'meta' },
        el('div', { testid: 'order-buyer' }, 'For: ', nameEl(o.buyer_name, o.buyer_id, { fallback: 'a buyer' })),
        el('div', {}, `To: ${o.delivery?.address || '—'}${dist ? ` (${dist})` : ''}`),
        el('div', { testid: 'order-driver' }, 'Driver: ', o.driver_id ? nameEl(o.driver_name, o.driver_id, { fallback: 'assigned' }) : '—'),
        el('div', { class: 'muted' }, `Placed ${time(o.created_at)} · cash on delivery (${o.payment?.status || 'pending'})`)),
      actions.length ? el('div', { class: 'actions' }, actions) : null,
    );
  }

  // ---------------------------------------------------------- products

  async function loadProducts() {
    const list = $('[data-testid="product-list"]');
    try {
      const { products } = await api('GET', `/api/shops/${shopId}/products`);
      list.replaceChildren(
        ...(products.length
          ? products.map((p) => el('li', { testid: 'product', dataset: { productId: p.id } }, el('span', {}, p.name), moneyEl(p.price_cents, { class: 'muted' })))
          : [el('li', { class: 'empty' }, 'No products yet — add the first one.')]),
      );
    } catch (e) {
      list.replaceChildren(el('li', { class: 'empty' }, errorText(e)));
    }
  }

  $('[data-testid="product-form"]').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = ev.currentTarget;
    const name = f.elements.namedItem('pname').value.trim();
    const price = Math.round(Number(f.elements.namedItem('price').value.replace(',', '.')) * 100);
    if (!name || !Number.isFinite(price) || price < 0) return;
    try {
      await api('POST', `/api/shops/${shopId}/products`, { token, body: { name, price_cents: price } });
      f.reset();
      toast(`Added ${name}`, 'success');
      loadProducts();
    } catch (e) {
      toast(errorText(e), 'error');
    }
  });

  // ---------------------------------------------------------- start

  loadShop();
  loadProducts();
  loadRecent();
  render();
}
