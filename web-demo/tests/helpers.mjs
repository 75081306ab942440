// Shared setup for the browser tests: the hub under test, REST calls as admin/vendor,
// a headless Chromium, screenshots and small waiting helpers.

import { chromium } from 'playwright-core';
import { mkdir, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HUB_URL = (process.env.HUB_URL || '').replace(/\/+$/, '');
export const ADMIN = process.env.HUB_ADMIN_TOKEN || '';
/** node:test `skip` value: false when the hub is configured, else the reason. */
export const SKIP = HUB_URL && ADMIN ? false : 'set HUB_URL and HUB_ADMIN_TOKEN to run the browser tests';

export const ARTIFACTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'test-artifacts');

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
}

/**
 * A fresh browser context (own sessionStorage, own cookies) with one page. Uncaught page
 * errors are collected in `page.pageErrors` so a test can assert there were none.
 */
export async function openPage(browser, label) {
  // A fixed locale, so that amounts are written the same way on every machine ("€3.50").
  const context = await browser.newContext({ viewport: DESKTOP, locale: 'en-US' });
  const page = await context.newPage();
  page.label = label;
  page.pageErrors = [];
  page.on('pageerror', (err) => page.pageErrors.push(`${label}: ${err.message}`));
  page.setDefaultTimeout(20_000);
  (browser.demoPages ||= []).push(page);
  return page;
}

/**
 * Runs `fn`; if it throws, saves a screenshot and the socket log (`hubDebug.log`) of every
 * page opened on `browser` as `failed-<name>-<page>.*` before rethrowing.
 */
export async function withFailureArtifacts(name, browser, fn) {
  try {
    return await fn();
  } catch (err) {
    await mkdir(ARTIFACTS, { recursive: true });
    for (const page of browser.demoPages || []) {
      const base = path.join(ARTIFACTS, `failed-${name}-${page.label}`);
      await page.screenshot({ path: `${base}.png`, fullPage: true }).catch(() => {});
      const log = await page.evaluate(() => (window.hubDebug ? window.hubDebug.log : null)).catch(() => null);
      await writeFile(`${base}.json`, JSON.stringify({ url: page.url(), pageErrors: page.pageErrors, socketLog: log }, null, 2)).catch(() => {});
    }
    throw err;
  }
}

export async function shot(page, name) {
  await mkdir(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

export const DESKTOP = { width: 1366, height: 900 };
export const PHONE = { width: 390, height: 844 };

/**
 * Screenshots `page` at a phone's width (`<name>-390.png`) and at the desktop width
 * (`<name>-1366.png`), and returns how far the page overflows the phone's width (0 when
 * nothing sticks out sideways).
 */
export async function shotBoth(page, name) {
  await page.setViewportSize(PHONE);
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await shot(page, `${name}-390`);
  await page.setViewportSize(DESKTOP);
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await shot(page, `${name}-1366`);
  return overflow;
}

/**
 * Every amount on the page: the text of each `.money` element, and any other number written
 * like money (digits, a point, two decimals — distances in km excepted) that has no currency
 * symbol next to it. `symbol` is how the browser writes the hub's currency.
 */
export async function amounts(page) {
  return page.evaluate(async () => {
    const { currency } = await (await fetch('/api/config')).json();
    const symbol = new Intl.NumberFormat(undefined, { style: 'currency', currency }).formatToParts(0).find((p) => p.type === 'currency').value;
    const tagged = [...document.querySelectorAll('.money')].filter((e) => e.offsetParent !== null || e.getClientRects().length).map((e) => e.textContent.trim());
    const text = document.body.innerText;
    const bare = [];
    for (const m of text.matchAll(/\d[\d,]*\.\d{2}(?!\d)(?!\s?km)/g)) {
      const before = text.slice(Math.max(0, m.index - symbol.length - 1), m.index);
      const after = text.slice(m.index + m[0].length, m.index + m[0].length + symbol.length + 1);
      if (!before.includes(symbol) && !after.includes(symbol)) bare.push(text.slice(Math.max(0, m.index - 20), m.index + m[0].length + 10));
    }
    return { currency, symbol, tagged, bare };
  });
}

/** Asserts that the page shows at least `min` amounts and that every one carries the currency. */
export async function assertAmountsCarryCurrency(page, assert, min = 1) {
  const a = await amounts(page);
  assert.ok(a.tagged.length >= min, `${page.label}: expected at least ${min} amounts, found ${a.tagged.length}`);
  for (const t of a.tagged) assert.ok(t.includes(a.symbol), `${page.label}: amount "${t}" has no ${a.currency} (${a.symbol})`);
  assert.deepEqual(a.bare, [], `${page.label}: amounts without a currency`);
  return a;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const suffix = () => randomBytes(3).toString('hex');

/** A random point away from the poles, so each run's shops and drivers stand alone. */
export function randomPoint() {
  return { lat: -50 + Math.random() * 110, lng: -170 + Math.random() * 340 };
}

/** The point `northM` metres north and `eastM` metres east of `p`. */
export function offsetM(p, northM, eastM) {
  const R = 6_371_008.8;
  return {
    lat: p.lat + (northM / R) * (180 / Math.PI),
    lng: p.lng + (eastM / (R * Math.cos((p.lat * Math.PI) / 180))) * (180 / Math.PI),
  };
}

export async function rest(method, urlPath, { token, body, headers = {}, expect } = {}) {
  const h = { ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (token) h.Authorization = `Bearer ${token}`;
  const res = await fetch(`${HUB_URL}${urlPath}`, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  const ok = expect ? (Array.isArray(expect) ? expect.includes(res.status) : res.status === expect) : res.ok;
  if (!ok) throw new Error(`${method} ${urlPath} → ${res.status} ${text.slice(0, 300)}`);
  return data;
}

/** Admin creates a shop at `at`; its vendor logs in and adds products. */
export async function createShopWithProducts(name, at, products = [{ name: 'Flat white', price_cents: 350 }]) {
  const { shop, login_code: code } = await rest('POST', '/api/admin/shops', {
    token: ADMIN,
    body: { name, lat: at.lat, lng: at.lng, address: `${name} street 1` },
    expect: 201,
  });
  const login = await rest('POST', '/api/auth/login', { body: { role: 'vendor', account_id: shop.id, code } });
  const created = [];
  for (const p of products) {
    created.push(await rest('POST', `/api/shops/${shop.id}/products`, { token: login.token, body: p, expect: 201 }));
  }
  return { shop, code, vendorToken: login.token, products: created };
}

export const tid = (id) => `[data-testid="${id}"]`;

/** Waits until the page's connection indicator shows `state`. */
export function waitConn(page, state, timeout = 20_000) {
  return page.waitForSelector(`${tid('conn-indicator')}[data-state="${state}"]`, { timeout });
}

/** A phone number no other test uses (drivers' numbers are unique hub-wide). */
export function randomPhone() {
  return `+1 555 ${String(Math.floor(Math.random() * 1e7)).padStart(7, '0')}`;
}

/** Admin creates a driver with a fresh phone number; returns {driver, code, phone}. */
export async function createDriver(name, phone = randomPhone()) {
  const r = await rest('POST', '/api/admin/drivers', { token: ADMIN, body: { name, phone }, expect: 201 });
  return { driver: r.driver, code: r.login_code, phone };
}

/** Signs in through the login page. */
export async function signIn(page, role, fields) {
  await page.goto(`${HUB_URL}/index.html#${role}`);
  if (role === 'vendor') {
    await page.waitForSelector(`${tid('vendor-shop')} option[value="${fields.shopId}"]`, { state: 'attached' });
    await page.selectOption(tid('vendor-shop'), fields.shopId);
    await page.fill(tid('vendor-code'), fields.code);
    await page.click(tid('vendor-login'));
    await page.waitForURL(/vendor\.html/);
  } else if (role === 'driver') {
    await page.fill(tid('driver-phone'), fields.phone || fields.driverId);
    await page.fill(tid('driver-code'), fields.code);
    await page.click(tid('driver-login'));
    await page.waitForURL(/driver\.html/);
  } else if (role === 'buyer') {
    await page.fill(tid('buyer-name'), fields.name);
    await page.fill(tid('buyer-phone'), fields.phone);
    await page.click(tid('buyer-signup'));
    await page.waitForURL(/buyer\.html/);
  } else if (role === 'admin') {
    await page.fill(tid('admin-token'), fields.token);
    await page.click(tid('admin-login'));
    await page.waitForURL(/fleet\.html/);
  }
  await waitConn(page, 'live');
}

/** Buyer page: pick the shop, add `count` of a product (the first one listed by default), and place the order. */
export async function placeOrder(page, shopId, { count = 2, address = 'Test lane 5', productId } = {}) {
  await page.click(`${tid('shop-card')}[data-shop-id="${shopId}"]`);
  const row = productId ? `${tid('product-row')}[data-product-id="${productId}"]` : tid('product-row');
  const add = page.locator(`${row} ${tid('add-to-cart')}`).first();
  for (let i = 0; i < count; i += 1) await add.click();
  await page.fill(tid('delivery-address'), address);
  await page.click(tid('place-order'));
  const tracking = page.locator(`${tid('tracking')}[data-status="pending"]`);
  await tracking.waitFor();
  const orderId = await tracking.getAttribute('data-order-id');
  const otp = (await page.locator(tid('order-otp')).textContent()).trim();
  return { orderId, otp };
}

/** The statuses of the buyer's timeline, top to bottom. */
export function timeline(page) {
  return page.$$eval(`${tid('timeline-entry')}`, (els) => els.map((e) => e.dataset.status));
}

/** Polls `fn` until it returns a truthy value. */
export async function until(fn, { timeout = 20_000, every = 200, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(every);
  }
}
