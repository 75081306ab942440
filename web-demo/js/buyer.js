import { api, requireSession, loadConfig, Hub, OrderStore, bindIndicator, exposeDebug, randomId, isActive } from './hub.js';
import { $, el, money, moneyEl, nameEl, time, toast, errorText, setupHeader, statusBadge, sessionEnded, STATUS_LABEL } from './ui.js';
import { offsetM, fmtDistance, validLat, validLng } from './geo.js';

const session = requireSession('buyer');
if (session) loadConfig().finally(main);

/** The status an order has after an event of this kind. */
const STATUS_AFTER = {
  created: 'pending',
  accepted: 'accepted',
  rejected: 'rejected',
  cancelled: 'cancelled',
  ready: 'ready',
  assigned: 'assigned',
  declined: 'ready',
  unassigned: 'ready',
  picked_up: 'picked_up',
  delivered: 'delivered',
  delivery_failed: 'delivery_failed',
  driver_lost: 'picked_up',
  dispatch_delayed: 'ready',
};

const EVENT_TEXT = {
  created: 'Order placed',
  accepted: 'The shop accepted the order',
  rejected: 'The shop could not take the order',
  cancelled: 'Order cancelled',
  ready: 'Ready for pickup — finding a driver',
  assigned: 'A driver is on the way to the shop',
  declined: 'The driver declined — finding another',
  unassigned: 'The driver dropped out — finding another',
  picked_up: 'Picked up — on the way to you',
  delivered: 'Delivered',
  delivery_failed: 'Delivery failed',
  driver_lost: 'Lost contact with the driver',
  dispatch_delayed: 'Still looking for a free driver nearby',
};

function main() {
  const me = session.subject_id;
  const token = session.token;
  const K = (k) => `dispatchHub.buyer.${me}.${k}`;
  const otpKey = (orderId) => `dispatchHub.otp.${orderId}`;
  const store = new OrderStore();
  const events = new Map(); // order id -> [event] by version
  const fetching = new Map(); // order id -> promise

  let shops = [];
  let shop = null;
  let products = [];
  const cart = new Map(); // product id -> {product, quantity}
  let tracked = sessionStorage.getItem(K('tracked'));
  let submitting = false;

  setupHeader();

  const hub = new Hub({
    token,
    topics: [`buyer:${me}`, ...(tracked ? [`order:${tracked}`] : [])],
    onMessage,
    onUnauthorized: sessionEnded,
  });
  bindIndicator(hub, $('[data-testid="conn-indicator"]'));
  exposeDebug(hub, {
    store,
    events,
    get tracked() {
      return tracked;
    },
  });
  hub.start();


  // ---------------------------------------------------------- shops and menu

  async function loadShops() {
    const box = $('[data-testid="shop-list"]');
    try {
      ({ shops } = await api('GET', '/api/shops'));
      shops.sort((a, b) => a.name.localeCompare(b.name));
      renderShops();
      const last = sessionStorage.getItem(K('shop'));
      if (last && shops.some((s) => s.id === last)) selectShop(last);
    } catch (e) {
      box.replaceChildren(el('p', { class: 'empty' }, errorText(e)));
    }
  }

  $('[data-testid="shop-filter"]').addEventListener('input', () => renderShops());

  function renderShops() {
    const box = $('[data-testid="shop-list"]');
    const q = $('[data-testid="shop-filter"]').value.trim().toLowerCase();
    const list = q ? shops.filter((s) => `${s.name} ${s.address || ''}`.toLowerCase().includes(q)) : shops;
    if (!list.length) {
      box.replaceChildren(el('p', { class: 'empty' }, shops.length ? 'No shop matches.' : 'No shops yet.'));
      return;
    }
    box.replaceChildren(
      ...list.map((s) =>
        el('button', {
          type: 'button',
          class: `shop-card${shop && shop.id === s.id ? ' selected' : ''}`,
          testid: 'shop-card',
          dataset: { shopId: s.id },
          onclick: () => selectShop(s.id),
        }, el('strong', {}, s.name), el('span', { class: 'muted small' }, s.address || `${s.lat.toFixed(4)}, ${s.lng.toFixed(4)}`)),
      ),
    );
  }

  async function selectShop(id) {
    const next = shops.find((s) => s.id === id);
    if (!next) return;
    if (shop && shop.id !== id && cart.size) {
      cart.clear();
      toast('Cart cleared: an order comes from one shop.', 'info');
    }
    shop = next;
    sessionStorage.setItem(K('shop'), id);
    renderShops();
    $('[data-testid="menu-shop"]').textContent = `— ${shop.name}`;
    // Default drop-off: half a kilometre from the shop.
    const drop = offsetM(shop, 400, 300);
    $('[data-testid="delivery-lat"]').value = drop.lat.toFixed(6);
    $('[data-testid="delivery-lng"]').value = drop.lng.toFixed(6);
    const menu = $('[data-testid="menu"]');
    menu.replaceChildren(el('li', { class: 'empty' }, 'Loading…'));
    try {
      ({ products } = await api('GET', `/api/shops/${id}/products`));
    } catch (e) {
      products = [];
      menu.replaceChildren(el('li', { class: 'empty' }, errorText(e)));
      return;
    }
    renderMenu();
    renderCart();
  }

  function renderMenu() {
    const menu = $('[data-testid="menu"]');
    const active = products.filter((p) => p.active !== false);
    if (!active.length) {
      menu.replaceChildren(el('li', { class: 'empty' }, 'Nothing on the menu yet.'));
      return;
    }
    menu.replaceChildren(
      ...active.map((p) =>
        el('li', { class: 'menu-item', testid: 'product-row', dataset: { productId: p.id } },
          el('span', {}, p.name),
          moneyEl(p.price_cents, { class: 'muted' }),
          el('button', { type: 'button', testid: 'add-to-cart', onclick: () => addToCart(p, 1) }, 'Add')),
      ),
    );
  }

  // ---------------------------------------------------------- cart and checkout

  function addToCart(p, delta) {
    const line = cart.get(p.id) || { product: p, quantity: 0 };
    line.quantity = Math.max(0, Math.min(100, line.quantity + delta));
    if (line.quantity === 0) cart.delete(p.id);
    else cart.set(p.id, line);
    renderCart();
  }

  function renderCart() {
    const list = $('[data-testid="cart"]');
    const lines = [...cart.values()];
    list.replaceChildren(
      ...(lines.length
        ? lines.map((l) =>
            el('li', { class: 'cart-line', testid: 'cart-line', dataset: { productId: l.product.id, quantity: String(l.quantity) } },
              el('span', {}, l.product.name),
              el('span', { class: 'qty' },
                el('button', { type: 'button', class: 'mini', 'aria-label': 'one less', onclick: () => addToCart(l.product, -1) }, '−'),
                el('span', { testid: 'cart-qty' }, String(l.quantity)),
                el('button', { type: 'button', class: 'mini', 'aria-label': 'one more', onclick: () => addToCart(l.product, 1) }, '+')),
              moneyEl(l.product.price_cents * l.quantity)))
        : [el('li', { class: 'empty' }, 'Empty.')]),
    );
    const total = lines.reduce((a, l) => a + l.product.price_cents * l.quantity, 0);
    const totalEl = $('[data-testid="cart-total"]');
    totalEl.textContent = money(total);
    totalEl.dataset.cents = String(total);
    renderSubmit();
  }

  function renderSubmit() {
    const btn = $('[data-testid="place-order"]');
    const pending = loadPending();
    btn.disabled = submitting || !shop || cart.size === 0;
    btn.textContent = submitting ? 'Placing the order…' : pending && pending.body === JSON.stringify(orderBody()) ? 'Retry placing the order' : 'Place order';
  }

  function orderBody() {
    if (!shop) return null;
    const f = $('[data-testid="delivery-form"]');
    return {
      shop_id: shop.id,
      items: [...cart.values()].map((l) => ({ product_id: l.product.id, quantity: l.quantity })),
      delivery: {
        lat: Number(f.elements.namedItem('lat').value.replace(',', '.')),
        lng: Number(f.elements.namedItem('lng').value.replace(',', '.')),
        address: f.elements.namedItem('address').value.trim(),
      },
      payment: 'cod',
    };
  }

  // The Idempotency-Key belongs to one cart submission: it is created once and reused by
  // every retry of the same body (also after a reload), so a retry can never order twice.
  const loadPending = () => JSON.parse(sessionStorage.getItem(K('pending')) || 'null');
  const savePending = (p) => sessionStorage.setItem(K('pending'), JSON.stringify(p));
  const clearPending = () => sessionStorage.removeItem(K('pending'));

  $('[data-testid="delivery-form"]').addEventListener('input', () => renderSubmit());
  $('[data-testid="delivery-form"]').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const errorBox = $('[data-testid="order-error"]');
    errorBox.textContent = '';
    const body = orderBody();
    if (!body || !body.items.length) return;
    if (!body.delivery.address) {
      errorBox.textContent = 'Enter a delivery address.';
      return;
    }
    if (!validLat(body.delivery.lat) || !validLng(body.delivery.lng)) {
      errorBox.textContent = 'The delivery position needs a latitude (−90…90) and longitude (−180…180).';
      return;
    }
    const bodyText = JSON.stringify(body);
    let pending = loadPending();
    if (!pending || pending.body !== bodyText) {
      pending = { key: randomId(), body: bodyText };
      savePending(pending);
    }
    submitting = true;
    renderSubmit();
    try {
      const r = await api('POST', '/api/orders', { token, body, headers: { 'Idempotency-Key': pending.key } });
      clearPending();
      sessionStorage.setItem(otpKey(r.order.id), r.otp);
      cart.clear();
      renderCart();
      store.apply(r.order);
      track(r.order.id);
      // The tracking card says it all; on a phone it is further down, so bring it into view.
      toast(`Order #${r.order.number} placed`, 'success', 1500);
      $('[data-testid="tracking-panel"]').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
    } catch (e) {
      const retryable = e.status === 0 || e.status >= 500 || e.status === 429;
      if (!retryable) clearPending();
      errorBox.textContent = retryable ? `${errorText(e)} Your order was not confirmed yet: retrying is safe.` : errorText(e);
    } finally {
      submitting = false;
      renderSubmit();
    }
  });

  // ---------------------------------------------------------- orders

  async function loadMyOrders() {
    try {
      const { orders } = await api('GET', '/api/orders?limit=20', { token });
      for (const o of orders) store.apply(o);
      renderMyOrders();
      if (!tracked && orders.length && isActive(orders[0])) track(orders[0].id);
    } catch {
      /* the socket snapshot still fills the active ones */
    }
  }

  async function refreshOrder(id) {
    try {
      const o = await api('GET', `/api/orders/${id}`, { token });
      if (store.apply(o)) afterOrderChange(o);
    } catch (e) {
      if (e.status === 404 && id === tracked) track(null);
    }
  }

  function onMessage(msg) {
    if (msg.type === 'snapshot') {
      for (const o of msg.orders || []) if (store.apply(o)) afterOrderChange(o);
      // A snapshot only shows where an order is now; fetch the log for the steps missed.
      const t = tracked && store.get(tracked);
      if (t && lastVersion(t.id) < t.version) fetchEvents(t.id);
      renderMyOrders();
      renderTracking();
    } else if (msg.type === 'order' && msg.order) {
      const o = msg.order;
      if (!store.apply(o)) return;
      if (msg.event && o.id === tracked) addEvent(o.id, msg.event);
      afterOrderChange(o);
    } else if (msg.type === 'error') {
      toast(`Hub: ${msg.message || msg.code}`, 'error');
    }
  }

  function afterOrderChange(o) {
    if (o.id === tracked && lastVersion(o.id) < o.version) fetchEvents(o.id);
    renderMyOrders();
    renderTracking();
  }

  const lastVersion = (id) => {
    const list = events.get(id);
    return list && list.length ? list[list.length - 1].version : 0;
  };

  function addEvent(orderId, ev) {
    const have = lastVersion(orderId);
    if (ev.version <= have) return; // the version rule, for the log too
    if (ev.version === have + 1) {
      events.set(orderId, [...(events.get(orderId) || []), ev]);
    } else {
      fetchEvents(orderId); // a gap: read the log
    }
  }

  function fetchEvents(orderId) {
    if (fetching.has(orderId)) {
      fetching.get(orderId).again = true;
      return;
    }
    const job = { again: false };
    fetching.set(orderId, job);
    (async () => {
      try {
        do {
          job.again = false;
          const r = await api('GET', `/api/orders/${orderId}/events`, { token });
          const list = (r.events || []).map((e) => ({ ...e, at: e.at || e.created_at })).sort((a, b) => a.version - b.version);
          if (list.length && list[list.length - 1].version > lastVersion(orderId)) events.set(orderId, list);
        } while (job.again);
      } catch {
        /* the next update tries again */
      } finally {
        fetching.delete(orderId);
        renderTracking();
      }
    })();
  }

  function track(id) {
    if (tracked === id) {
      renderTracking();
      return;
    }
    if (tracked) hub.unsubscribe(`order:${tracked}`);
    tracked = id;
    if (id) {
      sessionStorage.setItem(K('tracked'), id);
      hub.subscribe(`order:${id}`);
      if (!store.has(id)) refreshOrder(id);
      fetchEvents(id);
    } else {
      sessionStorage.removeItem(K('tracked'));
    }
    renderMyOrders();
    renderTracking();
  }

  // ---------------------------------------------------------- rendering

  function renderMyOrders() {
    const box = $('[data-testid="my-orders"]');
    const list = store.all().sort((a, b) => b.number - a.number).slice(0, 12);
    box.replaceChildren(
      ...list.map((o) =>
        el('button', {
          type: 'button',
          class: `order-chip status-${o.status}${o.id === tracked ? ' selected' : ''}`,
          testid: 'my-order',
          dataset: { orderId: o.id, status: o.status, version: String(o.version) },
          onclick: () => track(o.id),
        }, `#${o.number}`, el('span', { class: 'small' }, STATUS_LABEL[o.status] || o.status)),
      ),
    );
  }

  function renderTracking() {
    const panel = $('[data-testid="tracking-panel"]');
    const o = tracked ? store.get(tracked) : null;
    if (!o) {
      panel.replaceChildren(el('p', { class: 'empty' }, tracked ? 'Loading the order…' : 'Orders you place show up here, live.'));
      return;
    }
    const otp = sessionStorage.getItem(otpKey(o.id));
    const log = events.get(o.id) || [];
    const assigned = [...log].reverse().find((e) => e.kind === 'assigned');
    const shopName = o.shop_name || shops.find((s) => s.id === o.shop_id)?.name || 'Shop';
    const driverInfo = o.driver_id
      ? el('p', { class: 'driver-info', testid: 'driver-info', dataset: { driverId: o.driver_id } },
          'Driver ', el('strong', {}, nameEl(o.driver_name, o.driver_id, { fallback: 'assigned', testid: 'driver-name' })),
          assigned && assigned.payload && typeof assigned.payload.distance_m === 'number' && assigned.payload.driver_id === o.driver_id
            ? ` · ${fmtDistance(assigned.payload.distance_m)} from the shop when assigned`
            : '')
      : null;
    const showOtp = otp && !['delivered', 'rejected', 'cancelled'].includes(o.status);
    panel.replaceChildren(
      el('article', { class: `tracking status-${o.status}`, testid: 'tracking', dataset: { orderId: o.id, status: o.status, version: String(o.version), number: String(o.number) } },
        el('header', {}, el('strong', { class: 'order-number', testid: 'tracking-number' }, `#${o.number}`), statusBadge(o.status), el('span', { class: 'version' }, `v${o.version}`)),
        el('p', { class: 'muted small' }, nameEl(shopName, o.shop_id), ` · ${o.items.map((i) => `${i.quantity}× ${i.name}`).join(', ')} · `, moneyEl(o.total_cents, { testid: 'tracking-total' }), ' cash'),
        otp
          ? el('div', { class: `otp${showOtp ? '' : ' used'}` },
              el('span', {}, showOtp ? 'Give this code to the driver at the door' : 'Delivery code'),
              el('strong', { testid: 'order-otp' }, otp))
          : null,
        driverInfo,
        el('ol', { class: 'timeline', testid: 'timeline' },
          log.map((e) => {
            const status = STATUS_AFTER[e.kind] || e.kind;
            return el('li', { testid: 'timeline-entry', class: `status-${status}`, dataset: { kind: e.kind, status, version: String(e.version) } },
              el('span', { class: 'tl-dot' }),
              el('span', { class: 'tl-text' }, EVENT_TEXT[e.kind] || e.kind,
                e.payload && e.payload.reason ? el('span', { class: 'muted' }, ` (${e.payload.reason})`) : null,
                e.kind === 'assigned' && e.payload && typeof e.payload.distance_m === 'number' ? el('span', { class: 'muted' }, ` · ${fmtDistance(e.payload.distance_m)} away`) : null),
              el('time', { class: 'muted small' }, time(e.at)));
          })),
      ),
    );
  }

  // ---------------------------------------------------------- start

  loadShops();
  loadMyOrders();
  renderCart();
  if (tracked) {
    refreshOrder(tracked);
    fetchEvents(tracked);
  }
  renderTracking();
}
