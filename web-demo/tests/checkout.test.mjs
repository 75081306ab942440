// Checkout: a lost answer to POST /api/orders is retried with the same Idempotency-Key,
// so the buyer gets the one order (and its code) and never a duplicate.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SKIP, launch, openPage, shot, rest, suffix, randomPoint, createShopWithProducts, withFailureArtifacts, signIn, tid } from './helpers.mjs';

test('a retried checkout reuses its Idempotency-Key and never orders twice', { skip: SKIP, timeout: 120_000 }, async (t) => {
  const browser = await launch();
  t.after(() => browser.close());
  await withFailureArtifacts('checkout', browser, async () => {
    const tag = suffix();
    const { shop } = await createShopWithProducts(`Checkout Corner ${tag}`, randomPoint());

    const buyer = await openPage(browser, 'buyer');
    await signIn(buyer, 'buyer', { name: `Checkout Buyer ${tag}`, phone: '+49 30 555 0404' });
    const token = await buyer.evaluate(() => JSON.parse(sessionStorage.getItem('dispatchHub.session')).token);

    // The first POST reaches the hub, but its answer is lost on the way back.
    const keys = [];
    let dropAnswer = true;
    await buyer.route('**/api/orders', async (route) => {
      const req = route.request();
      if (req.method() !== 'POST') return route.continue();
      keys.push(req.headers()['idempotency-key']);
      if (dropAnswer) {
        dropAnswer = false;
        await route.fetch();
        return route.abort('failed');
      }
      return route.continue();
    });

    await buyer.click(`${tid('shop-card')}[data-shop-id="${shop.id}"]`);
    await buyer.locator(`${tid('product-row')} ${tid('add-to-cart')}`).first().click();
    await buyer.fill(tid('delivery-address'), 'Retry road 3');
    await buyer.click(tid('place-order'));
    await buyer.waitForSelector(`${tid('order-error')}:has-text("retrying is safe")`);
    await buyer.waitForSelector(`${tid('place-order')}:has-text("Retry")`);
    await shot(buyer, 'checkout-01-answer-lost');

    await buyer.click(tid('place-order'));
    const tracking = buyer.locator(`${tid('tracking')}[data-status="pending"]`);
    await tracking.waitFor();
    const orderId = await tracking.getAttribute('data-order-id');
    assert.match(await buyer.textContent(tid('order-otp')), /^\d{6}$/);

    assert.equal(keys.length, 2);
    assert.ok(keys[0] && keys[0].length <= 128, 'an Idempotency-Key was sent');
    assert.equal(keys[1], keys[0], 'the retry reuses the key');

    let mine = await rest('GET', '/api/orders', { token });
    assert.deepEqual(mine.orders.map((o) => o.id), [orderId], 'exactly one order was created');

    // A new cart is a new submission with a new key.
    await buyer.locator(`${tid('product-row')} ${tid('add-to-cart')}`).first().click();
    await buyer.click(tid('place-order'));
    await buyer.waitForSelector(`${tid('tracking')}[data-status="pending"]:not([data-order-id="${orderId}"])`);
    assert.equal(keys.length, 3);
    assert.notEqual(keys[2], keys[0]);
    mine = await rest('GET', '/api/orders', { token });
    assert.equal(mine.orders.length, 2);
    assert.deepEqual(buyer.pageErrors, []);
  });
});
