// Geometry for the demo: great-circle distances, small offsets, and a flat projection
// of lat/lng into a canvas by the bounding box of what is shown.

const EARTH_RADIUS_M = 6_371_008.8;
const rad = (d) => (d * Math.PI) / 180;

/** Haversine distance in metres between {lat, lng} points. */
export function haversineM(a, b) {
  const dLat = rad(b.lat - a.lat);
  const dLng = rad(b.lng - a.lng);
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(rad(a.lat)) * Math.cos(rad(b.lat)) * Math.sin(dLng / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(h)));
}

export function fmtDistance(m) {
  if (m === null || m === undefined || !Number.isFinite(m)) return '—';
  if (m < 1000) return `${Math.round(m)} m`;
  return `${(m / 1000).toFixed(m < 10_000 ? 2 : 1)} km`;
}

/** The point `northM` metres north and `eastM` metres east of `p`. */
export function offsetM(p, northM, eastM) {
  const lat = p.lat + (northM / EARTH_RADIUS_M) * (180 / Math.PI);
  const cos = Math.max(0.01, Math.cos(rad(p.lat)));
  let lng = p.lng + (eastM / (EARTH_RADIUS_M * cos)) * (180 / Math.PI);
  if (lng > 180) lng -= 360;
  if (lng < -180) lng += 360;
  return { lat: Math.max(-90, Math.min(90, lat)), lng };
}

/** Moves from `from` towards `to` by at most `meters`; returns the new point. */
export function stepToward(from, to, meters) {
  const d = haversineM(from, to);
  if (d <= meters || d === 0) return { lat: to.lat, lng: to.lng };
  const f = meters / d;
  return { lat: from.lat + (to.lat - from.lat) * f, lng: from.lng + (to.lng - from.lng) * f };
}

export const validLat = (v) => Number.isFinite(v) && v >= -90 && v <= 90;
export const validLng = (v) => Number.isFinite(v) && v >= -180 && v <= 180;

/**
 * Equirectangular projection fitted to the bounding box of `points` inside a
 * width × height box with `pad` pixels of margin. `minSpanM` keeps a single point (or a
 * tight cluster) from being zoomed in without limit.
 */
export class Projection {
  constructor(points, width, height, { pad = 28, minSpanM = 600 } = {}) {
    const pts = points.filter((p) => p && validLat(p.lat) && validLng(p.lng));
    let minLat = 90;
    let maxLat = -90;
    let minLng = 180;
    let maxLng = -180;
    for (const p of pts) {
      minLat = Math.min(minLat, p.lat);
      maxLat = Math.max(maxLat, p.lat);
      minLng = Math.min(minLng, p.lng);
      maxLng = Math.max(maxLng, p.lng);
    }
    if (!pts.length) {
      minLat = maxLat = 0;
      minLng = maxLng = 0;
    }
    const midLat = (minLat + maxLat) / 2;
    this.kx = Math.max(0.05, Math.cos(rad(midLat)));
    const minSpanDeg = (minSpanM / EARTH_RADIUS_M) * (180 / Math.PI);
    const spanY = Math.max(maxLat - minLat, minSpanDeg);
    const spanX = Math.max((maxLng - minLng) * this.kx, minSpanDeg);
    this.cLat = (minLat + maxLat) / 2;
    this.cLng = (minLng + maxLng) / 2;
    this.scale = Math.min((width - 2 * pad) / spanX, (height - 2 * pad) / spanY);
    this.w = width;
    this.h = height;
  }

  project(p) {
    return {
      x: this.w / 2 + (p.lng - this.cLng) * this.kx * this.scale,
      y: this.h / 2 - (p.lat - this.cLat) * this.scale,
    };
  }

  /** Metres per pixel at the centre, for a scale bar. */
  metersPerPixel() {
    return ((1 / this.scale) * Math.PI * EARTH_RADIUS_M) / 180;
  }
}
