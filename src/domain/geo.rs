//! Geography: validated WGS84 points, great-circle distance, and the projection onto the unit
//! sphere that lets an R-tree answer "nearest by great-circle distance".
//!
//! Comparing raw (lat, lng) degrees picks the wrong driver near the poles (a degree of longitude
//! shrinks to nothing) and across the ±180° meridian (179.9° and −179.9° are 20 km apart, not
//! 40,000). Points on the unit sphere have neither problem: the straight-line (chord) distance
//! between two unit vectors is `2·sin(θ/2)` for the central angle `θ`, which rises monotonically
//! with θ on [0, π] — so nearest-by-chord *is* nearest-by-great-circle.

use serde::{Deserialize, Serialize};

/// Mean Earth radius in metres (IUGG).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    pub lat: f64,
    pub lng: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GeoError {
    #[error("latitude must be a finite number in -90..=90")]
    Latitude,
    #[error("longitude must be a finite number in -180..=180")]
    Longitude,
}

impl GeoPoint {
    /// A validated point: both coordinates finite and in range.
    pub fn new(lat: f64, lng: f64) -> Result<Self, GeoError> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(GeoError::Latitude);
        }
        if !lng.is_finite() || !(-180.0..=180.0).contains(&lng) {
            return Err(GeoError::Longitude);
        }
        Ok(Self { lat, lng })
    }

    /// The point on the unit sphere (x towards 0°N 0°E, z towards the north pole).
    pub fn unit_vector(self) -> [f64; 3] {
        let (lat, lng) = (self.lat.to_radians(), self.lng.to_radians());
        let (slat, clat) = lat.sin_cos();
        let (slng, clng) = lng.sin_cos();
        [clat * clng, clat * slng, slat]
    }

    /// Great-circle distance in metres (haversine formula).
    pub fn haversine_m(self, other: GeoPoint) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlng = (other.lng - self.lng).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
    }
}

/// Squared chord length on the unit sphere for a great-circle distance in metres.
pub fn chord2_for_meters(m: f64) -> f64 {
    let theta = (m / EARTH_RADIUS_M).min(std::f64::consts::PI);
    let c = 2.0 * (theta / 2.0).sin();
    c * c
}

/// Great-circle metres for a squared chord length on the unit sphere.
pub fn meters_for_chord2(c2: f64) -> f64 {
    let c = c2.max(0.0).sqrt();
    2.0 * EARTH_RADIUS_M * (c / 2.0).min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_and_non_finite() {
        assert_eq!(GeoPoint::new(91.0, 0.0), Err(GeoError::Latitude));
        assert_eq!(GeoPoint::new(f64::NAN, 0.0), Err(GeoError::Latitude));
        assert_eq!(GeoPoint::new(0.0, 180.5), Err(GeoError::Longitude));
        assert_eq!(GeoPoint::new(0.0, f64::INFINITY), Err(GeoError::Longitude));
        assert!(GeoPoint::new(-90.0, -180.0).is_ok());
    }

    #[test]
    fn haversine_matches_known_distance() {
        // Berlin TV tower to Brandenburg Gate: about 2.2 km.
        let a = GeoPoint::new(52.5208, 13.4094).unwrap();
        let b = GeoPoint::new(52.5163, 13.3777).unwrap();
        let d = a.haversine_m(b);
        assert!((2_150.0..2_250.0).contains(&d), "{d}");
    }

    #[test]
    fn antimeridian_neighbours_are_close() {
        let a = GeoPoint::new(0.0, 179.95).unwrap();
        let b = GeoPoint::new(0.0, -179.95).unwrap();
        assert!(a.haversine_m(b) < 12_000.0);
    }

    #[test]
    fn chord_round_trips_to_meters() {
        for m in [1.0, 500.0, 10_000.0, 1_000_000.0] {
            let back = meters_for_chord2(chord2_for_meters(m));
            assert!((back - m).abs() < 1e-6 * m.max(1.0), "{m} -> {back}");
        }
        let a = GeoPoint::new(10.0, 20.0).unwrap();
        let b = GeoPoint::new(10.05, 20.05).unwrap();
        let (u, v) = (a.unit_vector(), b.unit_vector());
        let c2: f64 = (0..3).map(|i| (u[i] - v[i]).powi(2)).sum();
        assert!((meters_for_chord2(c2) - a.haversine_m(b)).abs() < 0.01);
    }
}
