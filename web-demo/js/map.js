// A tile-free map drawn on a canvas: shops, drivers (coloured by state) and orders in
// motion, projected by the bounding box of what is shown.

import { Projection, fmtDistance, validLat, validLng } from './geo.js';

export const DRIVER_COLORS = {
  free: '#16a34a',
  busy: '#ea580c',
  carrying: '#0891b2',
  unavailable: '#64748b',
  offline: '#cbd5e1',
  me: '#2563eb',
};

const SHOP_COLOR = '#1e3a8a';
const DROP_COLOR = '#7c3aed';
const hasPos = (p) => p && validLat(p.lat) && validLng(p.lng);

/** Sizes the canvas backing store to its CSS box and the device pixel ratio. */
function fit(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(200, Math.round(canvas.clientWidth || canvas.width));
  const h = Math.max(160, Math.round(canvas.clientHeight || canvas.height));
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, w, h };
}

/**
 * scene = {shops: [{id, name, lat, lng}], drivers: [{id, lat, lng, state, leg?, label?}],
 *          orders: [Order], frame?: [{lat, lng}] (what to fit; defaults to everything)}
 *
 * Labels are nudged up or down so that they do not overlap; what was drawn is left on
 * `canvas.drawnLabels` ({shops, drivers, orders}: [{id, label}]) for tests.
 */
export function drawMap(canvas, scene) {
  const { ctx, w, h } = fit(canvas);
  const placed = []; // label boxes drawn so far
  const drawn = { shops: [], drivers: [], orders: [] };
  const label = (text, x, y, color, bold = false) => placeLabel(ctx, placed, text, x, y, color, bold);
  const shops = (scene.shops || []).filter(hasPos);
  const drivers = (scene.drivers || []).filter(hasPos);
  const orders = scene.orders || [];
  const shopById = new Map(shops.map((s) => [s.id, s]));
  const driverById = new Map(drivers.map((d) => [d.id, d]));

  const everything = [...shops, ...drivers, ...orders.map((o) => o.delivery).filter(hasPos)];
  const proj = new Projection(scene.frame && scene.frame.length ? scene.frame : everything, w, h, {
    minSpanM: scene.minSpanM || 600,
  });
  const P = (p) => proj.project(p);

  // background and a light grid
  ctx.fillStyle = '#f8fafc';
  ctx.fillRect(0, 0, w, h);
  ctx.strokeStyle = '#e2e8f0';
  ctx.lineWidth = 1;
  for (let x = 0; x < w; x += 40) {
    ctx.beginPath();
    ctx.moveTo(x + 0.5, 0);
    ctx.lineTo(x + 0.5, h);
    ctx.stroke();
  }
  for (let y = 0; y < h; y += 40) {
    ctx.beginPath();
    ctx.moveTo(0, y + 0.5);
    ctx.lineTo(w, y + 0.5);
    ctx.stroke();
  }

  // orders: the route each one still has to travel
  for (const o of orders) {
    const shop = shopById.get(o.shop_id);
    const drop = hasPos(o.delivery) ? o.delivery : null;
    const drv = o.driver_id ? driverById.get(o.driver_id) : null;
    ctx.save();
    if (o.status === 'assigned' && drv && shop) {
      ctx.strokeStyle = DRIVER_COLORS.busy;
      ctx.setLineDash([6, 4]);
      line(ctx, P(drv), P(shop), 2);
    } else if (o.status === 'picked_up' && drv && drop) {
      ctx.strokeStyle = DROP_COLOR;
      line(ctx, P(drv), P(drop), 2.5);
    } else if (shop && drop) {
      ctx.strokeStyle = 'rgba(124,58,237,0.35)';
      ctx.setLineDash([2, 4]);
      line(ctx, P(shop), P(drop), 1.5);
    }
    ctx.restore();
    if (drop) {
      const p = P(drop);
      ctx.fillStyle = DROP_COLOR;
      ctx.beginPath();
      ctx.moveTo(p.x, p.y - 6);
      ctx.lineTo(p.x + 6, p.y);
      ctx.lineTo(p.x, p.y + 6);
      ctx.lineTo(p.x - 6, p.y);
      ctx.closePath();
      ctx.fill();
      label(`#${o.number}`, p.x + 8, p.y + 4, DROP_COLOR);
      drawn.orders.push({ id: o.id, label: `#${o.number}` });
    }
  }

  // shops
  for (const s of shops) {
    const p = P(s);
    ctx.fillStyle = SHOP_COLOR;
    ctx.fillRect(p.x - 7, p.y - 7, 14, 14);
    ctx.fillStyle = '#fff';
    ctx.fillRect(p.x - 3, p.y - 3, 6, 6);
    label(s.name, p.x + 10, p.y - 6, SHOP_COLOR, true);
    drawn.shops.push({ id: s.id, label: s.name });
  }

  // drivers on top
  for (const d of drivers) {
    const p = P(d);
    const shade = d.state === 'busy' && d.leg === 'carrying' ? 'carrying' : d.state;
    const color = d.me ? DRIVER_COLORS.me : DRIVER_COLORS[shade] || DRIVER_COLORS.offline;
    ctx.beginPath();
    ctx.arc(p.x, p.y, d.me ? 8 : 7, 0, Math.PI * 2);
    ctx.fillStyle = color;
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = d.state === 'offline' ? '#64748b' : '#fff';
    ctx.stroke();
    if (d.label) {
      label(d.label, p.x + 10, p.y + 14, '#334155');
      drawn.drivers.push({ id: d.id, label: d.label });
    }
  }

  // scale bar
  const mpp = proj.metersPerPixel();
  const target = mpp * 100;
  const nice = [10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6].find((n) => n >= target) || 1e7;
  const px = nice / mpp;
  ctx.fillStyle = '#334155';
  ctx.fillRect(12, h - 14, px, 3);
  drawLabel(ctx, fmtDistance(nice), 12, h - 20, '#334155');
  canvas.drawnLabels = drawn;
  return proj;
}

function line(ctx, a, b, width) {
  ctx.lineWidth = width;
  ctx.beginPath();
  ctx.moveTo(a.x, a.y);
  ctx.lineTo(b.x, b.y);
  ctx.stroke();
}

const LINE = 14;

/** Draws a label at the first of y, y+14, y−14, y+28, … where it overlaps no label drawn before. */
function placeLabel(ctx, placed, text, x, y, color, bold) {
  if (!text) return;
  setFont(ctx, bold);
  const width = ctx.measureText(text).width;
  const overlaps = (top) => placed.some((b) => x < b.x + b.w && b.x < x + width && top < b.y + LINE && b.y < top + LINE);
  let at = y;
  for (let i = 1; i <= 8 && overlaps(at - LINE + 3); i += 1) at = y + (i % 2 ? 1 : -1) * Math.ceil(i / 2) * LINE;
  placed.push({ x, y: at - LINE + 3, w: width });
  drawLabel(ctx, text, x, at, color, bold);
}

function setFont(ctx, bold) {
  ctx.font = `${bold ? '600 ' : ''}12px system-ui, -apple-system, "Segoe UI", sans-serif`;
}

function drawLabel(ctx, text, x, y, color, bold = false) {
  if (!text) return;
  setFont(ctx, bold);
  ctx.lineWidth = 3;
  ctx.strokeStyle = 'rgba(248,250,252,0.9)';
  ctx.strokeText(text, x, y);
  ctx.fillStyle = color;
  ctx.fillText(text, x, y);
}
