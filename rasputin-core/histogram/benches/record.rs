//! The cost of recording one value: `cargo bench -p rasputin-histogram`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rasputin_histogram::Histogram;

fn record(criterion: &mut Criterion) {
    let mut histogram = Histogram::new();
    let mut value = 1u64;
    criterion.bench_function("record a latency", |bencher| {
        bencher.iter(|| {
            // Values over six orders of magnitude, as latencies in ns are.
            value = value.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1) % 10_000_000_000;
            histogram.record(black_box(value));
        })
    });
    black_box(histogram.count());
}

criterion_group!(benches, record);
criterion_main!(benches);
