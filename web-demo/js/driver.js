import { api, requireSession, loadConfig, Hub, OrderStore, bindIndicator, exposeDebug } from './hub.js';
import { $, el, money, moneyEl, nameEl, toast, errorText, setupHeader, statusBadge, sessionEnded } from './ui.js';
import { haversineM, fmtDistance, offsetM, stepToward, validLat, validLng } from './geo.js';
import { drawMap } from './map.js';

const session = requireSession('driver');
if (session) loadConfig().finally(main);

function main() {
  const me = session.subject_id;
  const token = session.token;
  const store = new OrderStore();
  const assignedDistance = new Map(); // order id -> distance_m from the `assigned` event
  const K = (k) => `dispatchHub.driver.${me}.${k}`;
  const TICK_MS = 2000;
  const SIM_SPEED_M = 25; // per tick
  const WANDER_M = 6;

  let shops = new Map();
  // A new driver socket is available (docs/protocol.md), and so is this page: signing in
  // starts the shift until the driver goes off shift.
  let desiredAvailable = sessionStorage.getItem(K('available')) !== 'false';
  let confirmedAvailable = null;
  let pos = JSON.parse(sessionStorage.getItem(K('position')) || 'null');
  let simulate = sessionStorage.getItem(K('simulate')) === 'true';
  let anchor = pos;
  let geoWatch = null;
  let sent = 0;
  let lastSentAt = null;
  let inFlight = false;

  setupHeader();

  const hub = new Hub({
    token,
    topics: [`driver:${me}`],
    onMessage,
    onWelcome: () => {
      // Say what we want after every (re)connect (a second socket keeps the current state).
      hub.send({ type: 'availability', available: desiredAvailable });
      sendLocation();
    },
    onUnauthorized: sessionEnded,
  });
  bindIndicator(hub, $('[data-testid="conn-indicator"]'));
  exposeDebug(hub, {
    store,
    get position() {
      return pos;
    },
    get sent() {
      return sent;
    },
  });
  hub.onState(() => renderShift());
  hub.start();

  const latInput = $('[data-testid="start-lat"]');
  const lngInput = $('[data-testid="start-lng"]');
  const simToggle = $('[data-testid="toggle-simulate"]');
  simToggle.checked = simulate;
  if (pos) {
    latInput.value = pos.lat.toFixed(6);
    lngInput.value = pos.lng.toFixed(6);
  }


  // ---------------------------------------------------------- shops

  async function loadShops() {
    try {
      const { shops: list } = await api('GET', '/api/shops');
      shops = new Map(list.map((s) => [s.id, s]));
      if (!pos && !latInput.value && list.length) {
        // Default start: a couple of hundred metres from the first shop.
        const start = offsetM(list[0], 150, 150);
        latInput.value = start.lat.toFixed(6);
        lngInput.value = start.lng.toFixed(6);
      }
      renderAssignment();
      draw();
    } catch {
      /* retried when an assignment names an unknown shop */
    }
  }

  // ---------------------------------------------------------- socket messages

  function onMessage(msg) {
    if (msg.type === 'snapshot') {
      const inSnapshot = new Set();
      for (const o of msg.orders || []) {
        inSnapshot.add(o.id);
        store.apply(o);
      }
      for (const o of store.all()) if (isMine(o) && !inSnapshot.has(o.id)) refresh(o.id);
      renderAssignment();
    } else if (msg.type === 'order' && msg.order) {
      const o = msg.order;
      if (!store.apply(o)) return;
      const kind = msg.event?.kind;
      if (kind === 'assigned' && o.driver_id === me) {
        if (msg.event.payload && typeof msg.event.payload.distance_m === 'number') assignedDistance.set(o.id, msg.event.payload.distance_m);
        toast(`New assignment: order #${o.number}`, 'success', 8000);
      } else if ((kind === 'declined' || kind === 'unassigned') && o.driver_id !== me) {
        if (kind === 'unassigned') toast(`Order #${o.number} was taken away (you were offline too long)`, 'error', 8000);
      } else if (kind === 'cancelled') {
        toast(`Order #${o.number} was cancelled`, 'error', 8000);
      }
      if (!shops.has(o.shop_id)) loadShops();
      renderAssignment();
    } else if (msg.type === 'availability') {
      confirmedAvailable = !!msg.available;
      renderShift();
    } else if (msg.type === 'error') {
      toast(`Hub: ${msg.message || msg.code}`, 'error');
    }
  }

  async function refresh(id) {
    try {
      const o = await api('GET', `/api/orders/${id}`, { token });
      store.apply(o);
    } catch (e) {
      if (e.status === 404) store.delete(id); // no longer ours to see
    }
    renderAssignment();
  }

  function isMine(o) {
    return o.driver_id === me && (o.status === 'assigned' || o.status === 'picked_up');
  }

  function current() {
    return store.all().filter(isMine).sort((a, b) => a.number - b.number)[0] || null;
  }

  // ---------------------------------------------------------- availability

  $('[data-testid="btn-availability"]').addEventListener('click', () => {
    desiredAvailable = !desiredAvailable;
    sessionStorage.setItem(K('available'), String(desiredAvailable));
    if (desiredAvailable && !pos) setPositionFromInputs();
    hub.send({ type: 'availability', available: desiredAvailable });
    renderShift();
  });

  /**
   * What the driver is doing, as the hub sees it: offline (no connection), off shift, free,
   * on the way to the shop, or carrying the order. A job wins over the shift: a driver who
   * goes off shift while holding an order still has to deliver it.
   */
  function driverStatus() {
    const job = current();
    const live = hub.state === 'live';
    const confirmed = live && confirmedAvailable === desiredAvailable;
    if (job && job.status === 'picked_up') {
      return { state: 'carrying', text: `Carrying order #${job.number} to ${job.delivery?.address || 'the buyer'}` };
    }
    if (job) return { state: 'to_shop', text: `On the way to ${job.shop_name || shops.get(job.shop_id)?.name || 'the shop'} for order #${job.number}` };
    if (!live) return { state: 'offline', text: hub.state === 'reconnecting' ? 'Offline — reconnecting…' : 'Offline — connecting…' };
    if (!confirmed) return { state: 'pending', text: desiredAvailable ? 'Going on shift…' : 'Going off shift…' };
    if (!desiredAvailable) return { state: 'off_shift', text: 'Off shift — not taking orders' };
    if (!pos) return { state: 'no_position', text: 'On shift — set a position to get orders' };
    return { state: 'free', text: 'Free — waiting for an order nearby' };
  }

  function renderShift() {
    const p = $('[data-testid="shift-state"]');
    const btn = $('[data-testid="btn-availability"]');
    const confirmed = hub.state === 'live' && confirmedAvailable === desiredAvailable;
    const { state, text } = driverStatus();
    p.textContent = text;
    p.dataset.state = state;
    p.dataset.available = confirmed ? String(confirmedAvailable) : 'pending';
    p.className = `shift-state state-${state}`;
    btn.textContent = desiredAvailable ? 'Go off shift' : 'Go on shift';
    btn.dataset.available = String(desiredAvailable);
    btn.classList.toggle('primary', !desiredAvailable);
  }

  // ---------------------------------------------------------- position

  function readInputs() {
    const lat = Number(latInput.value.replace(',', '.'));
    const lng = Number(lngInput.value.replace(',', '.'));
    if (!latInput.value || !lngInput.value || !validLat(lat) || !validLng(lng)) return null;
    return { lat, lng };
  }

  function setPositionFromInputs() {
    const p = readInputs();
    if (!p) {
      toast('Enter a latitude (−90…90) and longitude (−180…180) first.', 'error');
      return false;
    }
    stopGeolocation();
    setPosition(p, true);
    return true;
  }

  function setPosition(p, isAnchor = false) {
    pos = { lat: p.lat, lng: p.lng };
    if (isAnchor || !anchor) anchor = pos;
    sessionStorage.setItem(K('position'), JSON.stringify(pos));
    sendLocation();
    renderPosition();
    renderAssignment();
    renderShift();
  }

  $('[data-testid="btn-set-position"]').addEventListener('click', () => setPositionFromInputs());

  $('[data-testid="btn-geolocate"]').addEventListener('click', () => {
    if (!navigator.geolocation) {
      toast('This browser has no geolocation.', 'error');
      return;
    }
    stopGeolocation();
    simulate = false;
    simToggle.checked = false;
    sessionStorage.setItem(K('simulate'), 'false');
    geoWatch = navigator.geolocation.watchPosition(
      (g) => {
        setPosition({ lat: g.coords.latitude, lng: g.coords.longitude }, true);
        latInput.value = pos.lat.toFixed(6);
        lngInput.value = pos.lng.toFixed(6);
      },
      (err) => {
        toast(`Location unavailable: ${err.message || 'permission denied'}`, 'error');
        stopGeolocation();
      },
      { enableHighAccuracy: true, maximumAge: 5000, timeout: 20_000 },
    );
    renderPosition();
  });

  function stopGeolocation() {
    if (geoWatch !== null) navigator.geolocation.clearWatch(geoWatch);
    geoWatch = null;
  }

  simToggle.addEventListener('change', () => {
    simulate = simToggle.checked;
    sessionStorage.setItem(K('simulate'), String(simulate));
    if (simulate) {
      stopGeolocation();
      if (!pos && !setPositionFromInputs()) {
        simulate = false;
        simToggle.checked = false;
      }
      anchor = pos;
    }
    renderPosition();
  });

  function sendLocation() {
    if (!pos || !hub.authed) return false;
    if (hub.send({ type: 'location', lat: pos.lat, lng: pos.lng })) {
      sent += 1;
      lastSentAt = Date.now();
      return true;
    }
    return false;
  }

  /** Walks towards the shop while assigned, towards the drop-off once picked up, else idles nearby. */
  function simulateStep() {
    if (!pos) return;
    const job = current();
    let target = null;
    if (job && job.status === 'assigned') target = shops.get(job.shop_id) || null;
    if (job && job.status === 'picked_up') target = job.delivery || null;
    if (target) {
      pos = stepToward(pos, target, SIM_SPEED_M);
    } else {
      const home = anchor || pos;
      const away = haversineM(pos, home);
      if (away > 120) pos = stepToward(pos, home, SIM_SPEED_M);
      else {
        const a = Math.random() * Math.PI * 2;
        pos = offsetM(pos, Math.cos(a) * WANDER_M, Math.sin(a) * WANDER_M);
      }
    }
    sessionStorage.setItem(K('position'), JSON.stringify(pos));
    latInput.value = pos.lat.toFixed(6);
    lngInput.value = pos.lng.toFixed(6);
  }

  function tick() {
    if (simulate) simulateStep();
    sendLocation();
    renderPosition();
    renderAssignment();
  }

  function renderPosition() {
    const p = $('[data-testid="position-status"]');
    p.dataset.sent = String(sent);
    p.dataset.source = geoWatch !== null ? 'geolocation' : simulate ? 'simulated' : pos ? 'manual' : 'none';
    if (!pos) {
      p.textContent = 'No position yet — set a start position, use your location, or simulate.';
      return;
    }
    const ago = lastSentAt ? `${Math.round((Date.now() - lastSentAt) / 1000)} s ago` : 'not yet';
    p.textContent = `${pos.lat.toFixed(5)}, ${pos.lng.toFixed(5)} · ${p.dataset.source} · last sent ${ago} (${sent} sent)`;
    draw();
  }

  // ---------------------------------------------------------- assignment

  let lastKey = '';
  const otpDraft = new Map(); // order id -> what was typed, kept across re-renders

  function renderAssignment() {
    const panel = $('[data-testid="assignment-panel"]');
    const job = current();
    const shop = job ? shops.get(job.shop_id) : null;
    const toShop = job && shop && pos ? haversineM(pos, shop) : null;
    const toDrop = job && pos && job.delivery ? haversineM(pos, job.delivery) : null;
    const key = job ? `${job.id}:${job.version}:${inFlight}:${!!shop}` : 'none';
    if (key === lastKey) {
      // only the distances move
      const ds = panel.querySelector('[data-testid="distance-to-shop"]');
      if (ds) ds.textContent = fmtDistance(toShop);
      const dd = panel.querySelector('[data-testid="distance-to-drop"]');
      if (dd) dd.textContent = fmtDistance(toDrop);
      draw();
      return;
    }
    lastKey = key;
    renderShift();
    if (!job) {
      panel.replaceChildren(el('p', { class: 'empty', testid: 'no-assignment' }, 'No assignment. Stay online near the shops; the dispatcher sends the nearest free driver.'));
      draw();
      return;
    }
    const otpInput = el('input', { id: 'otp-input', class: 'otp-input', testid: 'otp-input', inputmode: 'numeric', maxlength: '6', placeholder: '6 digits', autocomplete: 'off' });
    otpInput.value = otpDraft.get(job.id) || '';
    otpInput.addEventListener('input', () => otpDraft.set(job.id, otpInput.value));
    const actions =
      job.status === 'assigned'
        ? [
            el('button', { type: 'button', class: 'primary', testid: 'btn-pickup', disabled: inFlight, onclick: () => act(job, 'pick_up') }, 'Picked up'),
            el('button', { type: 'button', class: 'danger', testid: 'btn-decline', disabled: inFlight, onclick: () => act(job, 'decline') }, 'Decline'),
          ]
        : [
            el('div', { class: 'otp-field' }, el('label', { for: 'otp-input', class: 'otp-label', testid: 'otp-label' }, "Buyer's code"), otpInput),
            el('button', {
              type: 'button', class: 'primary', testid: 'btn-deliver', disabled: inFlight,
              onclick: () => {
                const otp = otpInput.value.trim();
                if (!/^\d{6}$/.test(otp)) {
                  toast('Enter the 6-digit code the buyer shows you.', 'error');
                  return;
                }
                act(job, 'deliver', { otp });
              },
            }, 'Deliver'),
            el('button', { type: 'button', class: 'danger', testid: 'btn-fail', disabled: inFlight, onclick: () => act(job, 'fail_delivery') }, 'Delivery failed'),
          ];
    const assignedAt = assignedDistance.get(job.id);
    panel.replaceChildren(
      el('article', { class: `assignment status-${job.status}`, testid: 'assignment', dataset: { orderId: job.id, status: job.status, version: String(job.version), number: String(job.number) } },
        el('header', {}, el('strong', { class: 'order-number' }, `#${job.number}`), statusBadge(job.status), el('span', { class: 'version' }, `v${job.version}`)),
        el('dl', { class: 'facts' },
          el('dt', {}, 'Shop'), el('dd', {}, nameEl(`${job.shop_name || shop?.name || ''}${shop?.address ? ` — ${shop.address}` : ''}`, job.shop_id, { fallback: 'the shop' })),
          el('dt', {}, 'Distance to shop'), el('dd', { testid: 'distance-to-shop' }, fmtDistance(toShop)),
          assignedAt !== undefined ? [el('dt', {}, 'When assigned'), el('dd', {}, `${fmtDistance(assignedAt)} from the shop`)] : null,
          el('dt', {}, 'Deliver to'), el('dd', {}, nameEl(job.buyer_name, job.buyer_id, { fallback: 'the buyer' }), ` — ${job.delivery?.address || '—'}`),
          el('dt', {}, 'Distance to drop-off'), el('dd', { testid: 'distance-to-drop' }, fmtDistance(toDrop)),
          el('dt', {}, 'Collect'), el('dd', {}, moneyEl(job.total_cents, { testid: 'collect-amount' }), ' in cash')),
        el('ul', { class: 'items' }, job.items.map((i) => el('li', {}, `${i.quantity}× ${i.name}`))),
        el('div', { class: 'actions' }, actions)),
    );
    draw();
  }

  async function act(job, action, extra = {}) {
    if (inFlight) return;
    inFlight = true;
    renderAssignment();
    try {
      let updated;
      if (hub.authed) {
        updated = (await hub.request({ type: 'transition', order_id: job.id, action, expected_version: job.version, ...extra })).order;
      } else {
        updated = await api('POST', `/api/orders/${job.id}/transitions`, { token, body: { action, expected_version: job.version, ...extra } });
      }
      store.apply(updated);
      const result = $('[data-testid="last-result"]');
      if (updated.status === 'delivered') {
        result.textContent = `Delivered #${updated.number} — collected ${money(updated.total_cents)} in cash.`;
        result.dataset.status = 'delivered';
        toast(`Delivered #${updated.number}`, 'success');
        loadEarnings();
      } else if (action === 'decline') {
        result.textContent = `Declined #${updated.number}.`;
        result.dataset.status = 'declined';
      } else if (updated.status === 'delivery_failed') {
        result.textContent = `Reported #${updated.number} as not delivered.`;
        result.dataset.status = 'delivery_failed';
      }
    } catch (e) {
      if (e.order) store.apply(e.order);
      toast(errorText(e), 'error', 8000);
    } finally {
      inFlight = false;
      renderAssignment();
    }
  }

  // ---------------------------------------------------------- earnings and map

  async function loadEarnings() {
    try {
      const r = await api('GET', '/api/drivers/me/commissions', { token });
      const n = r.commissions.length;
      $('[data-testid="earnings"]').replaceChildren(moneyEl(r.total_cents), ` from ${n} deliver${n === 1 ? 'y' : 'ies'}`);
    } catch {
      $('[data-testid="earnings"]').textContent = '—';
    }
  }

  let drawQueued = false;
  function draw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      const job = current();
      const shop = job ? shops.get(job.shop_id) : null;
      const frame = [];
      if (pos) frame.push(pos);
      if (shop) frame.push(shop);
      if (job && job.delivery) frame.push(job.delivery);
      const near = pos ? [...shops.values()].filter((s) => haversineM(pos, s) < 3000) : [];
      if (!job) frame.push(...near);
      drawMap($('[data-testid="driver-map"]'), {
        shops: shop ? [shop, ...near.filter((s) => s.id !== shop.id)] : near,
        drivers: pos ? [{ id: me, lat: pos.lat, lng: pos.lng, state: 'free', me: true, label: 'you' }] : [],
        orders: job ? [job] : [],
        frame,
        minSpanM: 400,
      });
    });
  }

  // ---------------------------------------------------------- start

  loadShops();
  loadEarnings();
  setInterval(tick, TICK_MS);
  window.addEventListener('resize', draw);
  renderShift();
  renderAssignment();
  renderPosition();
}
