//! Store latency (not a timed test): `txn`, `get` and `list` on the redb
//! store in a temp dir and on a real 3-member etcd on loopback, one caller
//! at a time, 1 KiB values. Prints p50 and p99 per operation.
//!
//!     cargo bench -p ballast-tests --bench store_latency -- 2000
//!
//! Under `cargo test` it is a small smoke run. Needs `etcd` installed.

use ballast_controller::store::{Compare, Op, RedbStore, Store};
use ballast_tests::etcd::EtcdCluster;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn measure(name: &str, s: &dyn Store, n: usize) {
    let mut txn = Vec::with_capacity(n);
    for i in 0..n {
        let k = format!("bench/{i:06}");
        let t = Instant::now();
        let done = s
            .txn(
                &[Compare::Absent(k.clone())],
                &[Op::Put(k, vec![7u8; 1024])],
            )
            .expect("txn");
        txn.push(t.elapsed());
        assert!(done);
    }
    let mut get = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        s.get(&format!("bench/{i:06}"))
            .expect("get")
            .expect("present");
        get.push(t.elapsed());
    }
    let t = Instant::now();
    let listed = s.list("bench/").expect("list").len();
    let list = t.elapsed();
    assert_eq!(listed, n);
    txn.sort();
    get.sort();
    println!(
        "{name:<12} txn p50 {:>9.2?} p99 {:>9.2?} | get p50 {:>9.2?} p99 {:>9.2?} | list {n} keys {:>9.2?}",
        percentile(&txn, 0.5),
        percentile(&txn, 0.99),
        percentile(&get, 0.5),
        percentile(&get, 0.99),
        list
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test` does not: a smoke run.
    let n = if args.iter().any(|a| a == "--bench") {
        args.iter()
            .skip(1)
            .find_map(|a| a.parse().ok())
            .unwrap_or(1000)
    } else {
        20
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let redb = RedbStore::open(&dir.path().join("bench.redb")).expect("open redb");
    measure("redb", &redb, n);
    let Some(cluster) = EtcdCluster::start(3) else {
        return;
    };
    measure("etcd (3, lo)", &cluster.store("/bench/"), n);
}
