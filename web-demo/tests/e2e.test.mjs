// End to end in a real browser: a buyer orders, the vendor accepts and marks it ready, the
// dispatcher assigns the driver waiting near the shop, the driver picks it up and delivers
// it with the buyer's code, and every page follows along live.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  SKIP, HUB_URL, ADMIN, launch, openPage, shot, rest, suffix, randomPoint, offsetM,
  createShopWithProducts, withFailureArtifacts, signIn, placeOrder, timeline, tid, until,
} from './helpers.mjs';

test('an order goes from buyer to vendor to driver and back, live on every page', { skip: SKIP, timeout: 240_000 }, async (t) => {
  const browser = await launch();
  t.after(() => browser.close());
  await withFailureArtifacts('e2e', browser, async () => {
    const tag = suffix();

    // A shop at a random point of the globe, so no other driver is nearer than ours.
    const at = randomPoint();
    const { shop, code: shopCode, products } = await createShopWithProducts(`E2E Café ${tag}`, at, [
      { name: 'Flat white', price_cents: 350 },
      { name: 'Croissant', price_cents: 250 },
    ]);
    const { driver, login_code: driverCode } = await rest('POST', '/api/admin/drivers', {
      token: ADMIN,
      body: { name: `E2E Driver ${tag}` },
      expect: 201,
    });

    // Fleet map (admin)
    const fleet = await openPage(browser, 'fleet');
    await fleet.goto(`${HUB_URL}/index.html#admin`);
    await shot(fleet, 'e2e-01-login');
    await signIn(fleet, 'admin', { token: ADMIN });

    // Vendor dashboard
    const vendor = await openPage(browser, 'vendor');
    await signIn(vendor, 'vendor', { shopId: shop.id, code: shopCode });
    await vendor.waitForSelector(`${tid('shop-name')}:has-text("${shop.name}")`);

    // Driver: start 200 m from the shop, go online, and walk (simulated).
    const driverPage = await openPage(browser, 'driver');
    await signIn(driverPage, 'driver', { driverId: driver.id, code: driverCode });
    const start = offsetM(shop, 150, 130);
    await driverPage.fill(tid('start-lat'), start.lat.toFixed(6));
    await driverPage.fill(tid('start-lng'), start.lng.toFixed(6));
    await driverPage.click(tid('btn-set-position'));
    await driverPage.click(tid('btn-availability'));
    await driverPage.waitForSelector(`${tid('shift-state')}[data-available="true"]`);
    await until(async () => Number(await driverPage.getAttribute(tid('position-status'), 'data-sent')) >= 1, { what: 'a location sent' });
    await driverPage.check(tid('toggle-simulate'));

    // The fleet map sees the driver free before anything is ready.
    await fleet.waitForSelector(`${tid('fleet-driver')}[data-driver-id="${driver.id}"][data-state="free"]`, { timeout: 30_000 });

    // Buyer signs up and orders.
    const buyer = await openPage(browser, 'buyer');
    await signIn(buyer, 'buyer', { name: `E2E Buyer ${tag}`, phone: '+49 30 555 0101' });
    const { orderId, otp } = await placeOrder(buyer, shop.id, { count: 2, address: 'Delivery road 7', productId: products[0].id });
    assert.match(otp, /^\d{6}$/, 'the buyer page shows the 6-digit code');
    await shot(buyer, 'e2e-02-buyer-ordered');

    // The vendor sees it arrive live, with a toast, and works it.
    const card = vendor.locator(`${tid('order-card')}[data-order-id="${orderId}"]`);
    await card.waitFor();
    assert.equal(await card.getAttribute('data-status'), 'pending');
    assert.equal(await card.getAttribute('data-version'), '1');
    await vendor.locator(tid('toast'), { hasText: 'New order' }).first().waitFor();
    assert.match(await card.locator(tid('order-total')).textContent(), /7\.00/);
    await shot(vendor, 'e2e-03-vendor-new-order');
    await card.locator(tid('btn-accept')).click();
    await vendor.waitForSelector(`${tid('order-card')}[data-order-id="${orderId}"][data-status="accepted"][data-version="2"]`);
    await vendor.locator(`${tid('order-card')}[data-order-id="${orderId}"] ${tid('btn-ready')}`).click();
    // The dispatcher may assign within milliseconds of `ready`, so the board may skip to v4.
    await vendor.waitForFunction(
      (id) => Number(document.querySelector(`[data-testid="order-card"][data-order-id="${id}"]`)?.dataset.version) >= 3,
      orderId,
    );

    // The dispatcher sends our driver.
    const job = `${tid('assignment')}[data-order-id="${orderId}"]`;
    await driverPage.waitForSelector(`${job}[data-status="assigned"]`, { timeout: 30_000 });
    assert.match(await driverPage.textContent(tid('distance-to-shop')), /\d+(\.\d+)? (m|km)$/);
    await vendor.waitForSelector(`${tid('order-card')}[data-order-id="${orderId}"][data-status="assigned"]`);
    assert.match(await vendor.textContent(`${tid('order-card')}[data-order-id="${orderId}"] ${tid('order-driver')}`), new RegExp(driver.id.slice(0, 8)));
    await buyer.waitForSelector(`${tid('driver-info')}[data-driver-id="${driver.id}"]`);
    await fleet.waitForSelector(`${tid('fleet-driver')}[data-driver-id="${driver.id}"][data-state="busy"]`, { timeout: 15_000 });
    await fleet.selectOption(tid('frame-select'), `shop:${shop.id}`);
    await shot(driverPage, 'e2e-04-driver-assigned');
    await shot(fleet, 'e2e-05-fleet-busy');

    await driverPage.click(`${job} ${tid('btn-pickup')}`);
    await driverPage.waitForSelector(`${job}[data-status="picked_up"]`);
    await driverPage.fill(tid('otp-input'), otp);
    await driverPage.click(`${job} ${tid('btn-deliver')}`);
    await driverPage.waitForSelector(`${tid('last-result')}[data-status="delivered"]`);
    await driverPage.waitForSelector(tid('no-assignment'));
    await shot(driverPage, 'e2e-06-driver-delivered');

    // The buyer's timeline shows every step, in order.
    await buyer.waitForSelector(`${tid('tracking')}[data-order-id="${orderId}"][data-status="delivered"]`);
    await until(async () => (await timeline(buyer)).length >= 6, { what: 'six timeline entries' });
    assert.deepEqual(await timeline(buyer), ['pending', 'accepted', 'ready', 'assigned', 'picked_up', 'delivered']);
    await shot(buyer, 'e2e-07-buyer-delivered');

    await vendor.waitForSelector(`${tid('column-done')} ${tid('order-card')}[data-order-id="${orderId}"][data-status="delivered"][data-version="6"]`);
    await shot(vendor, 'e2e-08-vendor-done');

    // And the hub agrees.
    const final = await rest('GET', `/api/orders/${orderId}`, { token: ADMIN });
    assert.equal(final.status, 'delivered');
    assert.equal(final.version, 6);
    assert.equal(final.driver_id, driver.id);
    assert.equal(final.payment.status, 'collected');

    for (const p of [fleet, vendor, driverPage, buyer]) assert.deepEqual(p.pageErrors, [], `no uncaught errors on the ${p.label} page`);
  });
});
