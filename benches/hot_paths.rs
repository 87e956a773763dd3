//! Micro-benchmarks of the per-request hot paths.

use criterion::{Criterion, criterion_group, criterion_main};

fn normalize(c: &mut Criterion) {
    c.bench_function("normalize", |b| {
        b.iter(|| resilient_qa::pipeline::normalize::normalize("  如何退货？ Where IS my order "))
    });
}

criterion_group!(benches, normalize);
criterion_main!(benches);
