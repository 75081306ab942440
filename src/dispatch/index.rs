//! The free-driver index: an R-tree over points on the unit sphere.
//!
//! Drivers are stored as 3-D unit vectors (see [`crate::domain::geo`]): the straight-line
//! distance between unit vectors grows monotonically with great-circle distance, so the R-tree's
//! Euclidean nearest neighbour is the great-circle nearest driver — right at the poles and
//! across the antimeridian, where raw latitude/longitude comparisons go wrong.

use rstar::RTree;
use rstar::primitives::GeomWithData;

use crate::domain::geo::{chord2_for_meters, meters_for_chord2};
use crate::domain::{DriverId, GeoPoint};

type Entry = GeomWithData<[f64; 3], DriverId>;

#[derive(Default)]
pub struct DriverIndex {
    tree: RTree<Entry>,
}

impl DriverIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an index in one go (faster than repeated inserts).
    pub fn bulk(points: impl IntoIterator<Item = (DriverId, GeoPoint)>) -> Self {
        let entries = points
            .into_iter()
            .map(|(id, p)| Entry::new(p.unit_vector(), id))
            .collect();
        Self {
            tree: RTree::bulk_load(entries),
        }
    }

    pub fn len(&self) -> usize {
        self.tree.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn insert(&mut self, id: DriverId, at: GeoPoint) {
        self.tree.insert(Entry::new(at.unit_vector(), id));
    }

    /// Removes the driver, which must be given with the position it was inserted at.
    pub fn remove(&mut self, id: DriverId, at: GeoPoint) -> bool {
        self.tree
            .remove(&Entry::new(at.unit_vector(), id))
            .is_some()
    }

    /// Moves a driver: remove at the old position, insert at the new one.
    pub fn relocate(&mut self, id: DriverId, from: GeoPoint, to: GeoPoint) {
        self.remove(id, from);
        self.insert(id, to);
    }

    /// The nearest driver to `from` within `max_m` metres (great-circle) for which `skip` is
    /// false, with its distance in metres.
    pub fn nearest(
        &self,
        from: GeoPoint,
        max_m: f64,
        skip: impl Fn(DriverId) -> bool,
    ) -> Option<(DriverId, f64)> {
        let q = from.unit_vector();
        let max_c2 = chord2_for_meters(max_m);
        // Fast path: the single nearest neighbour, no allocation.
        let (first, d2) = self.tree.nearest_neighbor_with_distance_2(q)?;
        if d2 > max_c2 {
            return None;
        }
        if !skip(first.data) {
            return Some((first.data, meters_for_chord2(d2)));
        }
        self.tree
            .nearest_neighbor_iter_with_distance_2(q)
            .take_while(|(_, d2)| *d2 <= max_c2)
            .find(|(e, _)| !skip(e.data))
            .map(|(e, d2)| (e.data, meters_for_chord2(d2)))
    }
}

/// The old system's way: look at every driver and keep the closest (for benchmarks and tests).
pub fn linear_nearest(drivers: &[(DriverId, GeoPoint)], from: GeoPoint) -> Option<(DriverId, f64)> {
    drivers
        .iter()
        .map(|(id, p)| (*id, from.haversine_m(*p)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random_point(rng: &mut StdRng) -> GeoPoint {
        // Uniform on the sphere, plus extra mass near the poles and the antimeridian.
        match rng.gen_range(0..4) {
            0 => GeoPoint::new(rng.gen_range(85.0..=90.0), rng.gen_range(-180.0..=180.0)),
            1 => GeoPoint::new(rng.gen_range(-90.0..=-85.0), rng.gen_range(-180.0..=180.0)),
            2 => {
                let lng = if rng.gen_bool(0.5) {
                    rng.gen_range(179.0..=180.0)
                } else {
                    rng.gen_range(-180.0..=-179.0)
                };
                GeoPoint::new(rng.gen_range(-70.0..=70.0), lng)
            }
            _ => {
                let z: f64 = rng.gen_range(-1.0..=1.0);
                GeoPoint::new(z.asin().to_degrees(), rng.gen_range(-180.0..=180.0))
            }
        }
        .unwrap()
    }

    #[test]
    fn nearest_matches_brute_force_haversine_worldwide() {
        let mut rng = StdRng::seed_from_u64(7);
        let drivers: Vec<(DriverId, GeoPoint)> = (0..5_000)
            .map(|i| (DriverId(uuid::Uuid::from_u128(i)), random_point(&mut rng)))
            .collect();
        let index = DriverIndex::bulk(drivers.iter().copied());
        for _ in 0..3_000 {
            let q = random_point(&mut rng);
            let (want_id, want_m) = linear_nearest(&drivers, q).unwrap();
            let (got_id, got_m) = index.nearest(q, f64::INFINITY, |_| false).unwrap();
            // Ties are possible in principle; compare distances, then ids when they differ.
            assert!(
                (got_m - want_m).abs() < 0.01,
                "query {q:?}: index {got_m} m, brute force {want_m} m"
            );
            if (got_m - want_m).abs() > 1e-6 {
                assert_eq!(got_id, want_id);
            }
        }
    }

    #[test]
    fn raw_degrees_would_pick_wrong_across_the_antimeridian() {
        let shop = GeoPoint::new(10.0, 179.9).unwrap();
        let across = (
            DriverId(uuid::Uuid::from_u128(1)),
            GeoPoint::new(10.0, -179.9).unwrap(),
        ); // ~22 km
        let same_side = (
            DriverId(uuid::Uuid::from_u128(2)),
            GeoPoint::new(10.0, 179.5).unwrap(),
        ); // ~44 km
        let index = DriverIndex::bulk([across, same_side]);
        let (id, m) = index.nearest(shop, 100_000.0, |_| false).unwrap();
        assert_eq!(id, across.0);
        assert!((20_000.0..25_000.0).contains(&m), "{m}");
    }

    #[test]
    fn near_the_pole_longitude_degrees_are_short() {
        let shop = GeoPoint::new(89.9, 0.0).unwrap();
        // 90° of longitude away but ~15.7 km; vs 0.3° of latitude away ~33 km.
        let around = (
            DriverId(uuid::Uuid::from_u128(1)),
            GeoPoint::new(89.9, 90.0).unwrap(),
        );
        let below = (
            DriverId(uuid::Uuid::from_u128(2)),
            GeoPoint::new(89.6, 0.0).unwrap(),
        );
        let index = DriverIndex::bulk([around, below]);
        assert_eq!(
            index.nearest(shop, 100_000.0, |_| false).unwrap().0,
            around.0
        );
    }

    #[test]
    fn respects_max_distance_skips_and_moves() {
        let shop = GeoPoint::new(52.52, 13.405).unwrap();
        let a = DriverId(uuid::Uuid::from_u128(1));
        let b = DriverId(uuid::Uuid::from_u128(2));
        let pa = GeoPoint::new(52.521, 13.405).unwrap(); // ~111 m
        let pb = GeoPoint::new(52.53, 13.405).unwrap(); // ~1.1 km
        let mut index = DriverIndex::new();
        index.insert(a, pa);
        index.insert(b, pb);
        assert_eq!(index.nearest(shop, 10_000.0, |_| false).unwrap().0, a);
        assert_eq!(index.nearest(shop, 10_000.0, |d| d == a).unwrap().0, b);
        assert_eq!(index.nearest(shop, 500.0, |d| d == a), None);
        assert_eq!(index.nearest(shop, 50.0, |_| false), None);
        let far = GeoPoint::new(53.0, 13.405).unwrap();
        index.relocate(a, pa, far);
        assert_eq!(index.nearest(shop, 10_000.0, |_| false).unwrap().0, b);
        assert!(index.remove(b, pb));
        assert!(!index.remove(b, pb));
        assert_eq!(index.len(), 1);
    }
}
