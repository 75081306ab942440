// Connection handling: the pages show that they are reconnecting, come back on their own,
// catch up with what happened while they were away, and never roll back to a stale version.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  SKIP, HUB_URL, launch, openPage, shot, rest, suffix, randomPoint,
  createShopWithProducts, withFailureArtifacts, signIn, placeOrder, timeline, tid, waitConn, until, sleep,
} from './helpers.mjs';

test('the buyer page reconnects and catches up with transitions made while it was away', { skip: SKIP, timeout: 180_000 }, async (t) => {
  const browser = await launch();
  t.after(() => browser.close());
  await withFailureArtifacts('buyer-reconnect', browser, async () => {
    const tag = suffix();
    const { shop, vendorToken } = await createShopWithProducts(`Reconnect Deli ${tag}`, randomPoint());

    const buyer = await openPage(browser, 'buyer');
    await signIn(buyer, 'buyer', { name: `Reconnect Buyer ${tag}`, phone: '+49 30 555 0202' });
    const { orderId } = await placeOrder(buyer, shop.id, { count: 1 });
    const tracking = (status, version) => `${tid('tracking')}[data-order-id="${orderId}"][data-status="${status}"]${version ? `[data-version="${version}"]` : ''}`;
    await buyer.waitForSelector(tracking('pending', 1));

    // 1. The socket dies; the page notices and comes back by itself.
    const before = await buyer.evaluate(() => window.hubDebug.reconnects);
    await buyer.evaluate(() => window.hubDebug.socket.close());
    await waitConn(buyer, 'live');
    await until(async () => (await buyer.evaluate(() => window.hubDebug.reconnects)) === before + 1, { what: 'one reconnect' });

    // 2. Killed again and held down while the vendor accepts over REST.
    await buyer.evaluate(() => {
      window.hubDebug.suspend();
      window.hubDebug.socket.close();
    });
    await waitConn(buyer, 'reconnecting');
    await shot(buyer, 'reconnect-01-buyer-reconnecting');
    const accepted = await rest('POST', `/api/orders/${orderId}/transitions`, {
      token: vendorToken,
      body: { action: 'accept', expected_version: 1 },
    });
    assert.equal(accepted.version, 2);
    await sleep(1000);
    assert.equal(await buyer.getAttribute(tid('tracking'), 'data-status'), 'pending', 'nothing arrives while the socket is down');
    await buyer.evaluate(() => window.hubDebug.resume());
    await waitConn(buyer, 'live');
    await buyer.waitForSelector(tracking('accepted', 2));
    await until(async () => (await timeline(buyer)).join() === 'pending,accepted', { what: 'timeline pending, accepted' });
    assert.equal(await buyer.evaluate(() => window.hubDebug.reconnects), before + 2);
    await shot(buyer, 'reconnect-02-buyer-caught-up');

    // 3. A stale message (version 1) can never roll the screen back.
    const v1 = { ...accepted, status: 'pending', version: 1 };
    await buyer.evaluate((order) => {
      window.hubDebug.inject({
        type: 'order',
        topic: `order:${order.id}`,
        event: { kind: 'created', version: 1, actor: { role: 'buyer', id: order.buyer_id }, payload: {}, at: order.created_at },
        order,
      });
    }, v1);
    await sleep(300);
    assert.equal(await buyer.getAttribute(tid('tracking'), 'data-status'), 'accepted');
    assert.equal(await buyer.getAttribute(tid('tracking'), 'data-version'), '2');
    assert.equal((await timeline(buyer)).join(), 'pending,accepted');

    // 4. The browser goes offline; the vendor cancels meanwhile; back online, the page catches up.
    await buyer.context().setOffline(true);
    await waitConn(buyer, 'reconnecting');
    const cancelled = await rest('POST', `/api/orders/${orderId}/transitions`, {
      token: vendorToken,
      body: { action: 'cancel', expected_version: 2, reason: 'out of milk' },
    });
    assert.equal(cancelled.status, 'cancelled');
    await until(async () => (await buyer.evaluate(() => window.hubDebug.attempts)) >= 2, { what: 'reconnect attempts while offline' });
    assert.equal(await buyer.getAttribute(tid('tracking'), 'data-status'), 'accepted', 'nothing arrives while offline');
    await shot(buyer, 'reconnect-03-buyer-offline');
    await buyer.context().setOffline(false);
    await waitConn(buyer, 'live', 30_000);
    await buyer.waitForSelector(tracking('cancelled', 3));
    await until(async () => (await timeline(buyer)).join() === 'pending,accepted,cancelled', { what: 'timeline with cancelled' });
    await shot(buyer, 'reconnect-04-buyer-back-online');

    assert.deepEqual(buyer.pageErrors, []);
  });
});

test('the vendor board picks up an order placed while its socket was down', { skip: SKIP, timeout: 120_000 }, async (t) => {
  const browser = await launch();
  t.after(() => browser.close());
  await withFailureArtifacts('vendor-reconnect', browser, async () => {
    const tag = suffix();
    const { shop, code, products } = await createShopWithProducts(`Reconnect Bakery ${tag}`, randomPoint());

    const vendor = await openPage(browser, 'vendor');
    await signIn(vendor, 'vendor', { shopId: shop.id, code });
    await vendor.evaluate(() => {
      window.hubDebug.suspend();
      window.hubDebug.socket.close();
    });
    await waitConn(vendor, 'reconnecting');

    const b = await rest('POST', '/api/buyers', { body: { name: `Rest Buyer ${tag}`, phone: '+49 30 555 0303' }, expect: 201 });
    const { order } = await rest('POST', '/api/orders', {
      token: b.token,
      headers: { 'Idempotency-Key': `reconnect-${tag}` },
      body: {
        shop_id: shop.id,
        items: [{ product_id: products[0].id, quantity: 3 }],
        delivery: { lat: shop.lat + 0.003, lng: shop.lng + 0.003, address: 'Side street 2' },
        payment: 'cod',
      },
      expect: 201,
    });
    await sleep(500);
    assert.equal(await vendor.locator(`${tid('order-card')}[data-order-id="${order.id}"]`).count(), 0);

    await vendor.evaluate(() => window.hubDebug.resume());
    await waitConn(vendor, 'live');
    const card = vendor.locator(`${tid('order-card')}[data-order-id="${order.id}"][data-status="pending"][data-version="1"]`);
    await card.waitFor();
    await vendor.locator(tid('toast'), { hasText: 'New order' }).first().waitFor();

    // Accepting from the board after the reconnect works with the version it shows.
    await card.locator(tid('btn-accept')).click();
    await vendor.waitForSelector(`${tid('order-card')}[data-order-id="${order.id}"][data-status="accepted"][data-version="2"]`);
    await shot(vendor, 'reconnect-05-vendor-caught-up');
    assert.deepEqual(vendor.pageErrors, []);
    assert.ok(HUB_URL);
  });
});
