//! Where an L2 read spends its time, without Node: `cargo run --release -p strata-core --example
//! l2_timing -- redis://127.0.0.1:PORT` (a throwaway redis-server). Prints p50/p99 per size.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use strata_core::l2::{L2Config, L2};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let l2 = L2::new(L2Config {
        urls: vec![url],
        namespace: "timing".into(),
        ..Default::default()
    })
    .unwrap();
    for size in [1024usize, 16 * 1024, 256 * 1024, 1024 * 1024] {
        let value = vec![7u8; size];
        l2.set_entry("k", &value, Duration::from_secs(60))
            .await
            .unwrap();
        let mut samples = Vec::new();
        for _ in 0..400 {
            let t = Instant::now();
            let v = l2.get_entry("k").await.unwrap().unwrap();
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(v.len(), size);
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        println!(
            "get {:>8} B: p50 {:>8.1} µs  p99 {:>8.1} µs",
            size,
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100]
        );
    }
}
