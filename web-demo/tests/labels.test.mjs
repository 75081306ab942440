// What a person reads: drivers are told apart by name (UUIDv7 ids created within a minute
// share their first digits, so those are no label), namesakes get the id's random tail, the
// full id is on hover; and the sign-in page takes a phone number and codes of 6 to 10 digits.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  SKIP, HUB_URL, ADMIN, launch, openPage, shot, shotBoth, rest, suffix, randomPoint, offsetM,
  createShopWithProducts, createDriver, withFailureArtifacts, signIn, tid, until,
} from './helpers.mjs';

test('four drivers created within one second get four distinct labels on the fleet map and its table', { skip: SKIP, timeout: 120_000 }, async (t) => {
  const browser = await launch();
  t.after(() => browser.close());
  await withFailureArtifacts('labels', browser, async () => {
    const tag = suffix();
    const at = randomPoint();
    const { shop } = await createShopWithProducts(`Label Kiosk ${tag}`, at);

    // Four drivers at once, and a fifth who shares the first one's name.
    const names = [`Ana ${tag}`, `Ben ${tag}`, `Cem ${tag}`, `Dita ${tag}`, `Ana ${tag}`];
    const made = await Promise.all(names.map((n) => createDriver(n)));
    const ids = made.map((m) => m.driver.id);
    const created = made.map((m) => Date.parse(m.driver.created_at));
    assert.ok(Math.max(...created) - Math.min(...created) < 1000, 'created within one second');
    assert.equal(new Set(ids).size, 5);

    // Each signs in with their phone number and goes online near the shop, over a socket.
    const tokens = [];
    for (const m of made) {
      const r = await rest('POST', '/api/auth/login', { body: { role: 'driver', phone: m.phone, code: m.code } });
      assert.equal(r.subject_id, m.driver.id, 'the phone number names the driver');
      tokens.push(r.token);
    }
    const spots = made.map((_, i) => offsetM(shop, 60 + 25 * i, 40 + 15 * i));
    const phones = await openPage(browser, 'phones');
    await phones.goto(`${HUB_URL}/index.html`);
    await phones.evaluate(({ tokens, spots }) => Promise.all(tokens.map((token, i) => new Promise((resolve, reject) => {
      const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
      const where = () => JSON.stringify({ type: 'location', lat: spots[i].lat, lng: spots[i].lng });
      ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token }));
      ws.onmessage = (m) => {
        if (JSON.parse(m.data).type !== 'welcome') return;
        ws.send(where());
        setInterval(() => ws.send(where()), 2000);
        resolve();
      };
      ws.onerror = () => reject(new Error('socket failed'));
    }))), { tokens, spots });

    const fleet = await openPage(browser, 'fleet');
    await signIn(fleet, 'admin', { token: ADMIN });
    await fleet.selectOption(tid('frame-select'), `shop:${shop.id}`);
    const row = (id) => `${tid('fleet-driver')}[data-driver-id="${id}"]`;
    await until(async () => {
      for (const id of ids) if (!(await fleet.$(`${row(id)}[data-state="free"]`))) return false;
      return true;
    }, { what: 'all five drivers free on the fleet page', timeout: 30_000 });

    // The table: names, the namesakes told apart, the full id on hover.
    const tableLabels = async () => Promise.all(ids.map((id) => fleet.textContent(`${row(id)} ${tid('driver-label')}`)));
    await until(async () => new Set(await tableLabels()).size === 5, { what: 'five distinct labels in the table' });
    const labels = await tableLabels();
    assert.deepEqual(labels.slice(1, 4), names.slice(1, 4), 'a driver with a unique name is labelled by the name');
    for (const i of [0, 4]) {
      assert.ok(labels[i].startsWith(names[i]), `a namesake keeps the name: ${labels[i]}`);
      assert.ok(labels[i].includes(ids[i].slice(-4)), `a namesake adds the id's random tail: ${labels[i]}`);
    }
    for (const id of ids) assert.equal(await fleet.getAttribute(`${row(id)} ${tid('driver-label')}`, 'title'), id);

    // The map draws the same five distinct labels.
    await until(async () => {
      const drawn = await fleet.evaluate(() => window.hubDebug.mapLabels);
      const mine = (drawn?.drivers || []).filter((d) => ids.includes(d.id));
      return mine.length === 5 && new Set(mine.map((d) => d.label)).size === 5;
    }, { what: 'five distinct driver labels on the map' });
    const drawn = await fleet.evaluate(() => window.hubDebug.mapLabels);
    const onMap = new Map(drawn.drivers.map((d) => [d.id, d.label]));
    assert.deepEqual(ids.map((id) => onMap.get(id)), labels, 'map and table agree');

    assert.equal(await shotBoth(fleet, 'labels-01-fleet'), 0, 'the fleet page fits a phone');
    assert.deepEqual(fleet.pageErrors, []);
  });
});

test('the sign-in page takes a phone number (or a driver id) and login codes of 6 to 10 digits', { skip: SKIP, timeout: 90_000 }, async (t) => {
  const browser = await launch();
  t.after(() => browser.close());
  await withFailureArtifacts('sign-in', browser, async () => {
    const tag = suffix();
    const page = await openPage(browser, 'login');
    await page.goto(`${HUB_URL}/index.html#driver`);
    for (const field of ['vendor-code', 'driver-code']) {
      const input = page.locator(tid(field));
      assert.equal(await input.getAttribute('maxlength'), '10');
      const valid = (v) => input.evaluate((e, value) => {
        e.value = value;
        return e.checkValidity();
      }, v);
      assert.equal(await valid('482913'), true, `${field}: 6 digits`);
      assert.equal(await valid('48291307'), true, `${field}: 8 digits`);
      assert.equal(await valid('4829'), false, `${field}: too short`);
      assert.equal(await valid('48a913'), false, `${field}: not digits`);
      assert.match(await page.textContent(`label:has(${tid(field)})`), /Login code/);
    }
    for (const tab of ['vendor', 'driver', 'buyer', 'admin']) {
      await page.click(tid(`tab-${tab}`));
      assert.equal(await shotBoth(page, `login-${tab}`), 0, `the ${tab} sign-in fits a phone`);
    }

    // A wrong code says what did not match, in words a person uses.
    const { driver, code, phone } = await createDriver(`Sign-in Driver ${tag}`);
    await page.click(tid('tab-driver'));
    await page.fill(tid('driver-phone'), phone);
    await page.fill(tid('driver-code'), code === '000000' ? '111111' : '000000');
    await page.click(tid('driver-login'));
    await page.waitForSelector(`${tid('login-error')}:has-text("phone number and code do not match")`);

    // A prefilled link with the driver's id still signs in.
    await page.goto(`${HUB_URL}/index.html?driver=${driver.id}#driver`);
    assert.equal(await page.inputValue(tid('driver-phone')), driver.id);
    await page.fill(tid('driver-code'), code);
    await page.click(tid('driver-login'));
    await page.waitForURL(/driver\.html/);
    await page.waitForSelector(`${tid('whoami')}:has-text("Sign-in Driver ${tag}")`);
    await shot(page, 'login-driver-signed-in');
    assert.deepEqual(page.pageErrors, []);
  });
});
