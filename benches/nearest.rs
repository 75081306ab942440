//! Nearest free driver: the R-tree of unit vectors against the linear scan the old system did.
//!
//! `cargo bench --bench nearest` — figures are recorded in docs/benchmarks.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dispatch_hub::dispatch::index::{DriverIndex, linear_nearest};
use dispatch_hub::domain::{DriverId, GeoPoint};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Drivers spread over a ~40 km metro area, as a city fleet would be.
fn fleet(n: usize, rng: &mut StdRng) -> Vec<(DriverId, GeoPoint)> {
    (0..n)
        .map(|i| {
            let p = GeoPoint::new(rng.gen_range(52.3..52.7), rng.gen_range(13.1..13.7)).unwrap();
            (DriverId(uuid::Uuid::from_u128(i as u128)), p)
        })
        .collect()
}

fn queries(rng: &mut StdRng) -> Vec<GeoPoint> {
    (0..1024)
        .map(|_| GeoPoint::new(rng.gen_range(52.3..52.7), rng.gen_range(13.1..13.7)).unwrap())
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(42);
    let qs = queries(&mut rng);
    let mut group = c.benchmark_group("nearest_free_driver");
    for n in [10_000usize, 100_000, 1_000_000] {
        let drivers = fleet(n, &mut rng);
        let index = DriverIndex::bulk(drivers.iter().copied());
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("rtree", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % qs.len();
                black_box(index.nearest(qs[i], 10_000.0, |_| false))
            })
        });
        group.sample_size(if n >= 1_000_000 { 10 } else { 30 });
        group.measurement_time(Duration::from_secs(if n >= 1_000_000 { 8 } else { 4 }));
        let mut j = 0usize;
        group.bench_with_input(BenchmarkId::new("linear_scan", n), &n, |b, _| {
            b.iter(|| {
                j = (j + 1) % qs.len();
                black_box(linear_nearest(&drivers, qs[j]))
            })
        });
        group.sample_size(100);
        group.measurement_time(Duration::from_secs(3));

        // Moving one driver: remove at the old position, insert at the new one.
        let mut index = index;
        let mut positions: Vec<GeoPoint> = drivers.iter().map(|d| d.1).collect();
        let mut k = 0usize;
        group.bench_with_input(BenchmarkId::new("move_one_driver", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 7919) % n;
                let old = positions[k];
                let step = if old.lat < 52.5 { 0.0005 } else { -0.0005 };
                let new = GeoPoint::new(old.lat + step, old.lng).unwrap();
                index.relocate(drivers[k].0, old, new);
                positions[k] = new;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
