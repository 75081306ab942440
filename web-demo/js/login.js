import { api, getSession, setSession, clearSession, pageFor } from './hub.js';
import { $, el, errorText } from './ui.js';

const errorBox = $('[data-testid="login-error"]');
const ROLES = ['vendor', 'driver', 'buyer', 'admin'];

function showTab(role) {
  if (!ROLES.includes(role)) role = 'vendor';
  for (const b of document.querySelectorAll('[data-tab]')) {
    const on = b.dataset.tab === role;
    b.classList.toggle('active', on);
    b.setAttribute('aria-selected', String(on));
  }
  for (const f of document.querySelectorAll('[data-form]')) f.hidden = f.dataset.form !== role;
  errorBox.textContent = '';
  if (location.hash !== `#${role}`) history.replaceState(null, '', `#${role}`);
}

for (const b of document.querySelectorAll('[data-tab]')) b.addEventListener('click', () => showTab(b.dataset.tab));
window.addEventListener('hashchange', () => showTab(location.hash.slice(1)));
showTab(location.hash.slice(1));

// Offer to continue an existing session.
const existing = getSession();
if (existing && existing.token) {
  const p = $('[data-testid="resume-session"]');
  p.hidden = false;
  p.append(
    'Signed in as ',
    el('strong', {}, existing.name ? `${existing.name} (${existing.role})` : existing.role),
    '. ',
    el('a', { href: pageFor(existing.role) }, 'Continue →'),
    ' ',
    el('button', { type: 'button', class: 'link', onclick: () => { clearSession(); p.hidden = true; } }, 'Forget'),
  );
}

// Vendor: a dropdown of shops so nobody has to type a UUID.
async function loadShops() {
  const select = $('[data-testid="vendor-shop"]');
  try {
    const { shops } = await api('GET', '/api/shops');
    select.replaceChildren(el('option', { value: '' }, shops.length ? 'Choose a shop…' : 'No shops yet'));
    for (const s of [...shops].sort((a, b) => a.name.localeCompare(b.name))) {
      select.append(el('option', { value: s.id }, `${s.name}${s.address ? ` — ${s.address}` : ''}`));
    }
    const want = new URLSearchParams(location.search).get('shop');
    if (want) select.value = want;
  } catch (e) {
    select.replaceChildren(el('option', { value: '' }, 'Could not load shops'));
    errorBox.textContent = errorText(e);
  }
}
loadShops();

function busy(form, on) {
  for (const c of form.querySelectorAll('button, input, select')) c.disabled = on;
}

const MISMATCH = {
  vendor: 'That shop and code do not match.',
  driver: 'That phone number and code do not match.',
};

async function submit(form, work) {
  errorBox.textContent = '';
  busy(form, true);
  try {
    const session = await work();
    setSession(session);
    location.href = pageFor(session.role);
  } catch (e) {
    errorBox.textContent = e.status === 401 && MISMATCH[form.dataset.form] ? MISMATCH[form.dataset.form] : errorText(e);
  } finally {
    busy(form, false);
  }
}

const form = (role) => $(`[data-form="${role}"]`);

/** Logs in and names the session after the account (`GET /api/me`), for the page header. */
async function login(body) {
  const r = await api('POST', '/api/auth/login', { body });
  let name = null;
  try {
    ({ name } = await api('GET', '/api/me', { token: r.token }));
  } catch {
    /* the header falls back to the role */
  }
  return { token: r.token, role: r.role, subject_id: r.subject_id, expires_at: r.expires_at, name };
}

form('vendor').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = ev.currentTarget;
  const shopId = f.elements.namedItem('shop').value;
  const code = f.elements.namedItem('code').value.trim();
  submit(f, () => login({ role: 'vendor', account_id: shopId, code }));
});

// Links can prefill the sign-in: index.html?phone=<number>#driver, index.html?shop=<id>#vendor
// (and, as before, ?driver=<id>#driver: the field takes a driver id too).
const params = new URLSearchParams(location.search);
const wantDriver = params.get('phone') || params.get('driver');
if (wantDriver) form('driver').elements.namedItem('phone').value = wantDriver;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

form('driver').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = ev.currentTarget;
  const who = f.elements.namedItem('phone').value.trim();
  const code = f.elements.namedItem('code').value.trim();
  const account = UUID.test(who) ? { account_id: who } : { phone: who };
  submit(f, () => login({ role: 'driver', ...account, code }));
});

form('buyer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = ev.currentTarget;
  const name = f.elements.namedItem('name').value.trim();
  const phone = f.elements.namedItem('phone').value.trim();
  submit(f, async () => {
    const r = await api('POST', '/api/buyers', { body: { name, phone } });
    return { token: r.token, role: r.role || 'buyer', subject_id: r.subject_id, expires_at: r.expires_at, name: r.buyer?.name || name };
  });
});

form('admin').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = ev.currentTarget;
  const token = f.elements.namedItem('token').value.trim();
  submit(f, async () => {
    const me = await api('GET', '/api/me', { token });
    if (me.role !== 'admin') throw Object.assign(new Error('That token is not the admin token.'), { code: 'not_admin' });
    return { token, role: 'admin', subject_id: null };
  });
});
