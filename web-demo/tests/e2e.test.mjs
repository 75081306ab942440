// End to end in a real browser: a buyer orders, the vendor accepts and marks it ready, the
// dispatcher assigns the driver waiting near the shop, the driver (signed in with a phone
// number) picks it up and delivers it with the buyer's code, and every page follows along
// live — with names instead of ids, the currency on every amount, the driver's status
// following the job, and each page checked at a phone's width and a desktop's.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  SKIP, HUB_URL, ADMIN, launch, openPage, shot, shotBoth, rest, suffix, randomPoint, offsetM,
  createShopWithProducts, createDriver, withFailureArtifacts, signIn, placeOrder, timeline, tid, until,
  assertAmountsCarryCurrency,
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
    const { driver, code: driverCode, phone } = await createDriver(`E2E Driver ${tag}`);

    // Fleet map (admin)
    const fleet = await openPage(browser, 'fleet');
    await fleet.goto(`${HUB_URL}/index.html#admin`);
    await shot(fleet, 'e2e-01-login');
    await signIn(fleet, 'admin', { token: ADMIN });

    // Vendor dashboard
    const vendor = await openPage(browser, 'vendor');
    await signIn(vendor, 'vendor', { shopId: shop.id, code: shopCode });
    await vendor.waitForSelector(`${tid('shop-name')}:has-text("${shop.name}")`);

    // Driver: signs in with the phone number, starts on shift (as a new driver socket does),
    // sets a start 200 m from the shop and walks (simulated).
    const driverPage = await openPage(browser, 'driver');
    await signIn(driverPage, 'driver', { phone, code: driverCode });
    assert.match(await driverPage.textContent(tid('whoami')), new RegExp(`E2E Driver ${tag}`), 'the header names the driver');
    await driverPage.waitForSelector(`${tid('shift-state')}[data-available="true"][data-state="no_position"]`);
    const start = offsetM(shop, 150, 130);
    await driverPage.fill(tid('start-lat'), start.lat.toFixed(6));
    await driverPage.fill(tid('start-lng'), start.lng.toFixed(6));
    await driverPage.click(tid('btn-set-position'));
    await driverPage.waitForSelector(`${tid('shift-state')}[data-state="free"]`);
    // Off shift and back on.
    await driverPage.click(tid('btn-availability'));
    await driverPage.waitForSelector(`${tid('shift-state')}[data-available="false"][data-state="off_shift"]`);
    await driverPage.click(tid('btn-availability'));
    await driverPage.waitForSelector(`${tid('shift-state')}[data-available="true"][data-state="free"]`);
    await until(async () => Number(await driverPage.getAttribute(tid('position-status'), 'data-sent')) >= 1, { what: 'a location sent' });
    await driverPage.check(tid('toggle-simulate'));

    // The fleet map sees the driver free before anything is ready.
    await fleet.waitForSelector(`${tid('fleet-driver')}[data-driver-id="${driver.id}"][data-state="free"]`, { timeout: 30_000 });
    const fleetLabel = fleet.locator(`${tid('fleet-driver')}[data-driver-id="${driver.id}"] ${tid('driver-label')}`);
    await until(async () => (await fleetLabel.textContent()) === driver.name, { what: 'the fleet naming the driver' });
    assert.equal(await fleetLabel.getAttribute('title'), driver.id, 'the full id on hover');

    // Buyer signs up and orders.
    const buyer = await openPage(browser, 'buyer');
    await signIn(buyer, 'buyer', { name: `E2E Buyer ${tag}`, phone: '+49 30 555 0101' });
    const { orderId, otp } = await placeOrder(buyer, shop.id, { count: 2, address: 'Delivery road 7', productId: products[0].id });
    assert.match(otp, /^\d{6}$/, 'the buyer page shows the 6-digit code');
    // The confirmation toast is brief: the tracking card already says it.
    await buyer.locator(tid('toast'), { hasText: 'placed' }).first().waitFor({ state: 'detached', timeout: 4000 });
    await assertAmountsCarryCurrency(buyer, assert, 3);
    assert.equal(await buyer.getAttribute(`${tid('tracking')} .name[data-id="${shop.id}"]`, 'title'), shop.id);
    assert.equal(await shotBoth(buyer, 'e2e-02-buyer-ordered'), 0, 'the buyer page fits a phone');

    // The vendor sees it arrive live, with a toast, and works it.
    const card = vendor.locator(`${tid('order-card')}[data-order-id="${orderId}"]`);
    await card.waitFor();
    assert.equal(await card.getAttribute('data-status'), 'pending');
    assert.equal(await card.getAttribute('data-version'), '1');
    await vendor.locator(tid('toast'), { hasText: 'New order' }).first().waitFor();
    assert.match(await card.locator(tid('order-total')).textContent(), /7\.00/);
    assert.match(await card.locator(tid('order-buyer')).textContent(), new RegExp(`E2E Buyer ${tag}`));
    await assertAmountsCarryCurrency(vendor, assert, 4);
    assert.equal(await shotBoth(vendor, 'e2e-03-vendor-new-order'), 0, 'the vendor page fits a phone');
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
    await driverPage.waitForSelector(`${tid('shift-state')}[data-state="to_shop"]`);
    assert.match(await driverPage.textContent(tid('shift-state')), new RegExp(`On the way to ${shop.name}`));
    await assertAmountsCarryCurrency(driverPage, assert, 1);
    await vendor.waitForSelector(`${tid('order-card')}[data-order-id="${orderId}"][data-status="assigned"]`);
    const cardDriver = `${tid('order-card')}[data-order-id="${orderId}"] ${tid('order-driver')}`;
    assert.match(await vendor.textContent(cardDriver), new RegExp(`Driver: E2E Driver ${tag}`));
    assert.equal(await vendor.getAttribute(`${cardDriver} .name`, 'title'), driver.id);
    await buyer.waitForSelector(`${tid('driver-info')}[data-driver-id="${driver.id}"]`);
    assert.equal(await buyer.textContent(tid('driver-name')), driver.name);
    await fleet.waitForSelector(`${tid('fleet-driver')}[data-driver-id="${driver.id}"][data-state="busy"][data-leg="to_shop"]`, { timeout: 15_000 });
    await fleet.selectOption(tid('frame-select'), `shop:${shop.id}`);
    assert.equal(await shotBoth(driverPage, 'e2e-04-driver-assigned'), 0, 'the driver page fits a phone');
    assert.equal(await shotBoth(fleet, 'e2e-05-fleet-busy'), 0, 'the fleet page fits a phone');

    await driverPage.click(`${job} ${tid('btn-pickup')}`);
    await driverPage.waitForSelector(`${job}[data-status="picked_up"]`);
    await driverPage.waitForSelector(`${tid('shift-state')}[data-state="carrying"]`);
    assert.match(await driverPage.textContent(tid('shift-state')), /^Carrying order #\d+ to Delivery road 7/);
    await fleet.waitForSelector(`${tid('fleet-driver')}[data-driver-id="${driver.id}"][data-leg="carrying"]`, { timeout: 15_000 });
    assert.match(await fleet.textContent(`${tid('fleet-driver')}[data-driver-id="${driver.id}"] ${tid('driver-doing')}`), /carrying/);
    // The buyer's code field: its label sits above the input, whole, at both widths.
    for (const size of [{ width: 390, height: 844 }, { width: 1366, height: 900 }]) {
      await driverPage.setViewportSize(size);
      const label = await driverPage.locator(tid('otp-label')).boundingBox();
      const input = await driverPage.locator(tid('otp-input')).boundingBox();
      assert.ok(label.y + label.height <= input.y + 1, `at ${size.width} px the code label is not covered by its input`);
      const clipped = await driverPage.$eval(tid('otp-label'), (e) => e.scrollWidth > e.clientWidth + 1);
      assert.equal(clipped, false, `at ${size.width} px the code label is whole`);
    }
    assert.equal(await shotBoth(driverPage, 'e2e-05b-driver-carrying'), 0);
    await driverPage.fill(tid('otp-input'), otp);
    await driverPage.click(`${job} ${tid('btn-deliver')}`);
    await driverPage.waitForSelector(`${tid('last-result')}[data-status="delivered"]`);
    await driverPage.waitForSelector(tid('no-assignment'));
    await driverPage.waitForSelector(`${tid('shift-state')}[data-state="free"]`);
    await driverPage.waitForSelector(`${tid('earnings')} .money`);
    await assertAmountsCarryCurrency(driverPage, assert, 1);
    await shotBoth(driverPage, 'e2e-06-driver-delivered');

    // The buyer's timeline shows every step, in order.
    await buyer.waitForSelector(`${tid('tracking')}[data-order-id="${orderId}"][data-status="delivered"]`);
    await until(async () => (await timeline(buyer)).length >= 6, { what: 'six timeline entries' });
    assert.deepEqual(await timeline(buyer), ['pending', 'accepted', 'ready', 'assigned', 'picked_up', 'delivered']);
    await assertAmountsCarryCurrency(buyer, assert, 1);
    await shotBoth(buyer, 'e2e-07-buyer-delivered');

    await vendor.waitForSelector(`${tid('column-done')} ${tid('order-card')}[data-order-id="${orderId}"][data-status="delivered"][data-version="6"]`);
    await assertAmountsCarryCurrency(vendor, assert, 4);
    await shotBoth(vendor, 'e2e-08-vendor-done');

    // And the hub agrees.
    const final = await rest('GET', `/api/orders/${orderId}`, { token: ADMIN });
    assert.equal(final.status, 'delivered');
    assert.equal(final.version, 6);
    assert.equal(final.driver_id, driver.id);
    assert.equal(final.payment.status, 'collected');

    for (const p of [fleet, vendor, driverPage, buyer]) assert.deepEqual(p.pageErrors, [], `no uncaught errors on the ${p.label} page`);
  });
});
