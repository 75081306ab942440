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
    el('strong', {}, existing.role),
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

async function submit(form, work) {
  errorBox.textContent = '';
  busy(form, true);
  try {
    const session = await work();
    setSession(session);
    location.href = pageFor(session.role);
  } catch (e) {
    errorBox.textContent = e.status === 401 ? 'That id and code do not match.' : errorText(e);
  } finally {
    busy(form, false);
  }
}

const form = (role) => $(`[data-form="${role}"]`);

form('vendor').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = ev.currentTarget;
  const shopId = f.elements.namedItem('shop').value;
  const shopName = f.elements.namedItem('shop').selectedOptions[0]?.textContent || '';
  const code = f.elements.namedItem('code').value.trim();
  submit(f, async () => {
    const r = await api('POST', '/api/auth/login', { body: { role: 'vendor', account_id: shopId, code } });
    return { token: r.token, role: r.role, subject_id: r.subject_id, expires_at: r.expires_at, name: shopName };
  });
});

// Links can prefill ids: index.html?driver=<id>#driver, index.html?shop=<id>#vendor
const wantDriver = new URLSearchParams(location.search).get('driver');
if (wantDriver) form('driver').elements.namedItem('driver').value = wantDriver;

form('driver').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = ev.currentTarget;
  const id = f.elements.namedItem('driver').value.trim();
  const code = f.elements.namedItem('code').value.trim();
  submit(f, async () => {
    const r = await api('POST', '/api/auth/login', { body: { role: 'driver', account_id: id, code } });
    return { token: r.token, role: r.role, subject_id: r.subject_id, expires_at: r.expires_at };
  });
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
