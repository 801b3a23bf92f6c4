//! The Redis L2 against real `redis-server` processes (single server and a 3-master Cluster),
//! started by the harness below on free loopback ports and killed when the test ends, also when
//! it panics.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use strata_core::breaker::{BreakerConfig, State};
use strata_core::clock::ManualClock;
use strata_core::envelope::{self, Compression, EnvelopeMeta, Kind};
use strata_core::l2::{Keys, L2Config, LogCursor, Refresh, L2, REFRESH_BATCH};
use strata_core::tags::{Durations, TagManifest, TagState};
use strata_core::Error;

// ---------------------------------------------------------------------------------------------
// Harness

const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// A `redis-server` child process on a loopback port; killed on drop.
struct Server {
    child: Option<Child>,
    port: u16,
    extra: Vec<String>,
    dir: PathBuf,
}

static DIRS: AtomicU64 = AtomicU64::new(0);

fn free_port(cluster: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !cluster {
            return port;
        }
        // A cluster node also listens on port + 10000 (the cluster bus).
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl Server {
    fn start() -> Server {
        Self::start_with(&[], false)
    }

    fn start_with(extra: &[&str], cluster: bool) -> Server {
        for _ in 0..10 {
            if let Some(server) = Self::start_on(free_port(cluster), extra) {
                return server;
            }
        }
        panic!("could not start redis-server");
    }

    /// On `port`; `None` if it could not listen there.
    fn start_on(port: u16, extra: &[&str]) -> Option<Server> {
        let dir = std::env::temp_dir().join(format!(
            "strata-l2-test-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Server {
            child: None,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        // On failure `server` is dropped, which removes its directory.
        server.spawn().then_some(server)
    }

    /// Starts the process on `self.port`; true once it printed "Ready to accept connections".
    fn spawn(&mut self) -> bool {
        let mut child = Command::new(REDIS_SERVER)
            .current_dir(&self.dir)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the ready line so the server never blocks on a full pipe.
            let mut ready = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !ready && line.contains("Ready to accept connections") {
                    ready = true;
                    let _ = tx.send(true);
                }
            }
            if !ready {
                let _ = tx.send(false); // exited first (e.g. port taken)
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(20)).unwrap_or(false);
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        self.child = Some(child);
        true
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
        }
        panic!("could not restart redis-server on port {}", self.port);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three cluster masters with all 16384 slots assigned.
struct Cluster {
    nodes: Vec<Server>,
}

impl Cluster {
    async fn start() -> Cluster {
        let nodes: Vec<Server> = (0..3)
            .map(|_| {
                Server::start_with(
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ],
                    true,
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(REDIS_CLI)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster { nodes };
        // Every node must agree the cluster is up before clients rely on its slot map.
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &cluster.nodes {
            let mut c = raw(&node.url()).await;
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster not ok: {info}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        cluster
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Server::url).collect()
    }
}

async fn raw(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

static NAMESPACES: AtomicU64 = AtomicU64::new(0);

fn config(url: &str) -> L2Config {
    L2Config {
        urls: vec![url.to_owned()],
        namespace: format!("t{}", NAMESPACES.fetch_add(1, Ordering::Relaxed)),
        ..L2Config::default()
    }
}

fn tags(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn envelope_with_tags(key: &str, tags: &[&str], payload: &[u8]) -> Vec<u8> {
    envelope::encode(
        &EnvelopeMeta {
            kind: Kind::USE_CACHE,
            key,
            tags,
            timestamp: 1_795_000_000_000.0,
            server_ts: 1_795_000_000_000.0,
            stale: 300.0,
            revalidate: 900.0,
            expire: 3600.0,
            extra: &[],
        },
        payload,
        Compression::DISABLED,
    )
    .unwrap()
}

async fn hlen(c: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("HLEN").arg(key).query_async(c).await.unwrap()
}

async fn zcard(c: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("ZCARD").arg(key).query_async(c).await.unwrap()
}

fn incremental(r: Refresh) -> (LogCursor, Vec<(String, TagState)>, bool) {
    match r {
        Refresh::Incremental {
            cursor,
            changes,
            more,
        } => (cursor, changes, more),
        other => panic!("expected Incremental, got {other:?}"),
    }
}

fn resync(r: Refresh) -> (LogCursor, Vec<(String, TagState)>, bool) {
    match r {
        Refresh::Resync {
            cursor,
            all,
            data_lost,
        } => (cursor, all, data_lost),
        other => panic!("expected Resync, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Entries

#[tokio::test]
async fn entries_round_trip_with_a_ttl() {
    let server = Server::start();
    let mut cfg = config(&server.url());
    cfg.max_ttl = Duration::from_secs(10);
    let l2 = L2::new(cfg).unwrap();
    let mut c = raw(&server.url()).await;

    assert_eq!(l2.get_entry("/missing").await.unwrap(), None);

    let value: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    l2.set_entry("/blog/1", &value, Duration::from_secs(5))
        .await
        .unwrap();
    let got = l2.get_entry("/blog/1").await.unwrap().unwrap();
    assert_eq!(&got[..], &value[..]);

    // Stored under the hashed, hash-tagged key, with a TTL in (0, ttl].
    let key = l2.keys().entry("/blog/1");
    assert!(key.starts_with(&format!("sc:{}:e:{{", l2.keys().namespace())));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 5_000, "pttl {pttl}");

    // Capped at max_ttl.
    l2.set_entry("/blog/2", b"v", Duration::from_secs(3600))
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(l2.keys().entry("/blog/2"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 10_000, "pttl {pttl}");

    // A zero TTL still writes (1 ms), never a key without expiry.
    l2.set_entry("/blog/3", b"v", Duration::ZERO).await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(l2.keys().entry("/blog/3"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl == -2 || (0..=1).contains(&pttl), "pttl {pttl}");

    l2.delete_entry("/blog/1").await.unwrap();
    assert_eq!(l2.get_entry("/blog/1").await.unwrap(), None);
    l2.delete_entry("/never-written").await.unwrap();
}

#[tokio::test]
async fn namespaces_do_not_see_each_other() {
    let server = Server::start();
    let a = L2::new(config(&server.url())).unwrap();
    let b = L2::new(config(&server.url())).unwrap();
    a.set_entry("/page", b"a", Duration::from_secs(60))
        .await
        .unwrap();
    a.update_tags(&tags(&["t"]), None).await.unwrap();

    assert_eq!(b.get_entry("/page").await.unwrap(), None);
    let (cursor, changes, _) = incremental(b.refresh(&LogCursor::default()).await.unwrap());
    assert_eq!(cursor, LogCursor::default());
    assert!(changes.is_empty());
    let (_, all, _) = resync(a.refresh(&LogCursor::default()).await.unwrap());
    assert_eq!(all.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Tag state

#[tokio::test]
async fn update_tags_is_stamped_by_redis_and_follows_the_rules() {
    let server = Server::start();
    // The instance's clock is 25 years off: stamps must not come from it.
    let local = ManualClock::new(1_000_000_000_000.0);
    let l2 = L2::with_clock(config(&server.url()), Arc::new(local)).unwrap();
    let mut c = raw(&server.url()).await;
    let mut mirror = TagManifest::new(1000);

    let before = l2.server_time().await.unwrap();
    assert!((before.local_mid_ms - 1_000_000_000_000.0).abs() < 1e-6);
    assert!(before.rtt_ms >= 0.0 && before.rtt_ms < 1000.0);

    // No durations: expired = now.
    let u1 = l2.update_tags(&tags(&["a", "b", "a"]), None).await.unwrap();
    let after = l2.server_time().await.unwrap();
    let now1 = u1.server_now_ms;
    assert!(
        before.server_ms <= now1 && now1 <= after.server_ms,
        "{} <= {now1} <= {}",
        before.server_ms,
        after.server_ms
    );
    assert!((now1 - 1_000_000_000_000.0).abs() > 1e9);
    assert_eq!(u1.states.len(), 2, "duplicates count once");
    assert_eq!(u1.states[0].0, "a");
    assert_eq!(u1.states[1].0, "b");
    let expect = TagState {
        stale: None,
        expired: Some(now1),
        updated_at: now1,
    };
    assert_eq!(u1.states[0].1, expect);
    assert_eq!(u1.states[1].1, expect);
    mirror.update(&["a", "b"], None, now1);
    assert_eq!(mirror.get("a"), Some(expect));
    assert!(!u1.cursor_after.epoch.is_empty() && !u1.cursor_after.last_id.is_empty());

    // Durations with expire: stale = now, expired = now + expire * 1000 (exactly).
    let u2 = l2
        .update_tags(&tags(&["a"]), Some(Durations { expire: Some(60.5) }))
        .await
        .unwrap();
    let now2 = u2.server_now_ms;
    assert!(now2 >= now1);
    let s2 = u2.states[0].1;
    assert_eq!(s2.stale, Some(now2));
    assert_eq!(s2.expired, Some(now2 + 60.5 * 1000.0));
    assert_eq!(s2.updated_at, now2);
    mirror.update(&["a"], Some(Durations { expire: Some(60.5) }), now2);
    assert_eq!(mirror.get("a"), Some(s2));

    // Durations without expire: stale = now, expired keeps its value.
    let u3 = l2
        .update_tags(&tags(&["a", "c"]), Some(Durations { expire: None }))
        .await
        .unwrap();
    let now3 = u3.server_now_ms;
    assert_eq!(
        u3.states[0].1,
        TagState {
            stale: Some(now3),
            expired: Some(now2 + 60_500.0),
            updated_at: now3
        }
    );
    assert_eq!(
        u3.states[1].1,
        TagState {
            stale: Some(now3),
            expired: None,
            updated_at: now3
        }
    );
    mirror.update(&["a", "c"], Some(Durations { expire: None }), now3);
    assert_eq!(mirror.get("a"), Some(u3.states[0].1));
    assert_eq!(mirror.get("c"), Some(u3.states[1].1));

    // What is stored is what was returned (and what a resync reads).
    let (_, all, _) = resync(l2.refresh(&LogCursor::default()).await.unwrap());
    let all: BTreeMap<String, TagState> = all.into_iter().collect();
    assert_eq!(all.len(), 3);
    assert_eq!(all["a"], u3.states[0].1);
    assert_eq!(all["b"], u1.states[1].1);
    assert_eq!(all["c"], u3.states[1].1);
    // The pruning index keeps a record while its future expiry can still matter.
    let score: f64 = redis::cmd("ZSCORE")
        .arg(l2.keys().tag_index())
        .arg("a")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(score, now2 + 60_500.0);
    assert_eq!(zcard(&mut c, l2.keys().tag_index()).await, 3);

    // Infinity ("never") is stored as a finite far-future stamp; NaN is refused.
    let u4 = l2
        .update_tags(
            &tags(&["d"]),
            Some(Durations {
                expire: Some(f64::INFINITY),
            }),
        )
        .await
        .unwrap();
    assert!(u4.states[0].1.expired.unwrap() > u4.server_now_ms + 1e14);
    let nan = l2
        .update_tags(
            &tags(&["d"]),
            Some(Durations {
                expire: Some(f64::NAN),
            }),
        )
        .await;
    assert!(matches!(nan, Err(Error::InvalidArg { .. })));

    // No tags: nothing written.
    let xlen: u64 = redis::cmd("XLEN")
        .arg(l2.keys().tag_log())
        .query_async(&mut c)
        .await
        .unwrap();
    let none = l2.update_tags(&[], None).await.unwrap();
    assert!(none.states.is_empty());
    assert_eq!(none.cursor_after, LogCursor::default());
    let xlen2: u64 = redis::cmd("XLEN")
        .arg(l2.keys().tag_log())
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(xlen, xlen2);
}

#[tokio::test]
async fn refresh_follows_the_log() {
    let server = Server::start();
    let l2 = L2::new(config(&server.url())).unwrap();

    // Nothing ever invalidated: nothing to do.
    let (cursor, changes, more) = incremental(l2.refresh(&LogCursor::default()).await.unwrap());
    assert_eq!(
        (cursor, changes.len(), more),
        (LogCursor::default(), 0, false)
    );

    let u1 = l2.update_tags(&tags(&["a", "b"]), None).await.unwrap();

    // A fresh cursor reads the whole state.
    let (cursor, all, data_lost) = resync(l2.refresh(&LogCursor::default()).await.unwrap());
    assert!(!data_lost);
    assert_eq!(cursor, u1.cursor_after);
    let all: BTreeMap<String, TagState> = all.into_iter().collect();
    let expect: BTreeMap<String, TagState> = u1.states.iter().cloned().collect();
    assert_eq!(all, expect);

    // Nothing new.
    let (same, changes, more) = incremental(l2.refresh(&cursor).await.unwrap());
    assert_eq!(same, cursor);
    assert!(changes.is_empty() && !more);

    // Exactly the next change, in log order.
    let u2 = l2
        .update_tags(&tags(&["c"]), Some(Durations { expire: Some(1.0) }))
        .await
        .unwrap();
    let u3 = l2.update_tags(&tags(&["a"]), None).await.unwrap();
    let (next, changes, more) = incremental(l2.refresh(&cursor).await.unwrap());
    assert!(!more);
    assert_eq!(next, u3.cursor_after);
    assert_eq!(changes, [u2.states.clone(), u3.states.clone()].concat());

    // Again: empty.
    let (again, changes, _) = incremental(l2.refresh(&next).await.unwrap());
    assert_eq!(again, next);
    assert!(changes.is_empty());

    // More than one batch behind: `more` until caught up, and nothing is lost.
    let n = REFRESH_BATCH + 20;
    for i in 0..n {
        l2.update_tags(&tags(&[&format!("bulk-{i}")]), None)
            .await
            .unwrap();
    }
    let (c1, batch1, more1) = incremental(l2.refresh(&next).await.unwrap());
    assert!(more1);
    assert_eq!(batch1.len(), REFRESH_BATCH);
    let (c2, batch2, more2) = incremental(l2.refresh(&c1).await.unwrap());
    assert!(!more2);
    assert_eq!(batch2.len(), 20);
    assert_eq!(batch2.last().unwrap().0, format!("bulk-{}", n - 1));
    let (_, rest, _) = incremental(l2.refresh(&c2).await.unwrap());
    assert!(rest.is_empty());

    // A garbage cursor of the right epoch resynchronises instead of failing.
    let bad = LogCursor {
        epoch: c2.epoch.clone(),
        last_id: "not-an-id".into(),
    };
    let (fixed, _, lost) = resync(l2.refresh(&bad).await.unwrap());
    assert!(!lost);
    assert_eq!(fixed, c2);
}

#[tokio::test]
async fn a_cursor_behind_a_trimmed_log_resyncs() {
    let server = Server::start();
    let mut cfg = config(&server.url());
    cfg.log_max_len = 10;
    let l2 = L2::new(cfg).unwrap();
    let mut c = raw(&server.url()).await;

    let first = l2.update_tags(&tags(&["first"]), None).await.unwrap();
    let cursor = first.cursor_after.clone();
    for i in 0..600 {
        l2.update_tags(&tags(&[&format!("t{i}")]), None)
            .await
            .unwrap();
    }
    let xlen: u64 = redis::cmd("XLEN")
        .arg(l2.keys().tag_log())
        .query_async(&mut c)
        .await
        .unwrap();
    // MAXLEN ~ trims whole stream nodes (100 entries by default).
    assert!(xlen < 300, "log not trimmed: {xlen}");

    let (next, all, data_lost) = resync(l2.refresh(&cursor).await.unwrap());
    assert!(!data_lost);
    assert_eq!(all.len(), 601);
    let (_, changes, _) = incremental(l2.refresh(&next).await.unwrap());
    assert!(changes.is_empty());
}

#[tokio::test]
async fn a_flushed_redis_is_data_lost() {
    let server = Server::start();
    let l2 = L2::new(config(&server.url())).unwrap();
    let mut c = raw(&server.url()).await;

    let u = l2.update_tags(&tags(&["a"]), None).await.unwrap();
    let (cursor, _, _) = resync(l2.refresh(&LogCursor::default()).await.unwrap());
    assert_eq!(cursor, u.cursor_after);

    // Redis restarted empty (or was flushed): the epoch vanished.
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let (lost_cursor, all, data_lost) = resync(l2.refresh(&cursor).await.unwrap());
    assert!(data_lost);
    assert!(all.is_empty());
    assert_eq!(lost_cursor, LogCursor::default());
    let (_, changes, _) = incremental(l2.refresh(&lost_cursor).await.unwrap());
    assert!(changes.is_empty());

    // A new invalidation starts a new epoch: a cursor of the old one is told data was lost.
    let u2 = l2.update_tags(&tags(&["b"]), None).await.unwrap();
    assert_ne!(u2.cursor_after.epoch, u.cursor_after.epoch);
    let (new_cursor, all, data_lost) = resync(l2.refresh(&cursor).await.unwrap());
    assert!(data_lost);
    assert_eq!(new_cursor, u2.cursor_after);
    assert_eq!(all, u2.states);
    // ... while an instance that never synced just reads the state.
    let (_, _, data_lost) = resync(l2.refresh(&LogCursor::default()).await.unwrap());
    assert!(!data_lost);

    // The log alone vanishing (eviction, a stray DEL) also starts a new epoch on the next
    // update instead of leaving cursors pointing into nothing.
    redis::cmd("DEL")
        .arg(l2.keys().tag_log())
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let (_, _, data_lost) = resync(l2.refresh(&new_cursor).await.unwrap());
    assert!(data_lost);
    let u3 = l2.update_tags(&tags(&["c"]), None).await.unwrap();
    assert_ne!(u3.cursor_after.epoch, u2.cursor_after.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_bounds_the_tag_state() {
    let server = Server::start();
    let mut cfg = config(&server.url());
    cfg.max_ttl = Duration::from_millis(1);
    let l2 = Arc::new(L2::new(cfg).unwrap());
    let mut c = raw(&server.url()).await;
    let (state, idx) = (l2.keys().tag_state(), l2.keys().tag_index());

    // A record whose expiry is still ahead must survive pruning.
    l2.update_tags(
        &tags(&["future"]),
        Some(Durations {
            expire: Some(3600.0),
        }),
    )
    .await
    .unwrap();

    // 100 000 distinct tags (as revalidatePath's per-URL tags), one per call.
    const TOTAL: usize = 100_000;
    const WORKERS: usize = 32;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (l2, next) = (Arc::clone(&l2), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i as usize >= TOTAL {
                    break;
                }
                l2.update_tags(&[format!("_N_T_/page/{i}")], None)
                    .await
                    .unwrap();
            }
        }));
    }
    let mut peak = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        peak = peak.max(hlen(&mut c, state).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let (h, z) = (hlen(&mut c, state).await, zcard(&mut c, idx).await);
    eprintln!("pruning: {TOTAL} updates in {elapsed:?}; HLEN {h}, ZCARD {z}, peak {peak}");
    assert!(h <= 2_000, "tag state not bounded: HLEN {h}");
    assert!(peak <= 2_000, "tag state not bounded: peak HLEN {peak}");
    assert_eq!(h, z, "state and index out of step");
    let future: Option<String> = redis::cmd("HGET")
        .arg(state)
        .arg("future")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        future.is_some(),
        "a record with a pending expiry was pruned"
    );
    let xlen: u64 = redis::cmd("XLEN")
        .arg(l2.keys().tag_log())
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(xlen <= 10_000 + 200, "log not bounded: {xlen}");
}

/// Commands Redis ran since the last `CONFIG RESETSTAT` (scripts' inner commands included),
/// without the test's own bookkeeping.
async fn command_calls(c: &mut MultiplexedConnection) -> BTreeMap<String, u64> {
    info(c, "commandstats")
        .await
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        // Redis 7 reports subcommands as `config|resetstat`.
        .filter(|(name, _)| {
            let command = name.split('|').next().unwrap_or_default();
            !["config", "info", "slowlog"].contains(&command)
        })
        .collect()
}

/// The duration in µs of the last EVALSHA in the slow log.
async fn last_evalsha_micros(c: &mut MultiplexedConnection) -> i64 {
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100)
        .query_async(c)
        .await
        .unwrap();
    for entry in log {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let (Some(redis::Value::Int(micros)), Some(redis::Value::Array(args))) =
            (fields.get(2), fields.get(3))
        else {
            continue;
        };
        if let Some(redis::Value::BulkString(name)) = args.first() {
            if name.eq_ignore_ascii_case(b"EVALSHA") {
                return *micros;
            }
        }
    }
    panic!("no EVALSHA in the slow log");
}

#[tokio::test]
async fn update_tags_costs_the_same_whatever_the_number_of_entries() {
    let server = Server::start();
    let l2 = L2::new(config(&server.url())).unwrap();
    let mut c = raw(&server.url()).await;
    // Test-only: the library itself never uses CONFIG.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    // Warm up: script loaded, epoch and log created.
    l2.update_tags(&tags(&["warm-up"]), None).await.unwrap();

    async fn measure(
        l2: &L2,
        c: &mut MultiplexedConnection,
        tag: &str,
    ) -> (BTreeMap<String, u64>, i64) {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut *c)
            .await
            .unwrap();
        redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async::<()>(&mut *c)
            .await
            .unwrap();
        l2.update_tags(&[tag.to_owned()], None).await.unwrap();
        let calls = command_calls(c).await;
        (calls, last_evalsha_micros(c).await)
    }

    // One entry carries tag "one".
    let e = envelope_with_tags("/one", &["one"], b"payload");
    l2.set_entry("/one", &e, Duration::from_secs(600))
        .await
        .unwrap();
    let (calls_one, micros_one) = measure(&l2, &mut c, "one").await;

    // 100 000 entries carry tag "many".
    const N: usize = 100_000;
    for chunk in 0..N / 1000 {
        let mut pipe = redis::pipe();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            let key = format!("/many/{i}");
            pipe.cmd("SET")
                .arg(l2.keys().entry(&key))
                .arg(envelope_with_tags(&key, &["many", "other"], b"payload"))
                .arg("PX")
                .arg(600_000)
                .ignore();
        }
        pipe.query_async::<()>(&mut c).await.unwrap();
    }
    let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert!(dbsize > N as u64);
    let (calls_many, micros_many) = measure(&l2, &mut c, "many").await;

    eprintln!(
        "update_tags: {micros_one} µs with 1 entry, {micros_many} µs with {N}; {calls_many:?}"
    );
    // The same commands, the same number of times: no per-entry work at all.
    assert_eq!(calls_one, calls_many);
    assert_eq!(calls_many.get("evalsha"), Some(&1));
    // And fast in absolute terms (generous for a loaded CI machine; typically ~50 µs).
    assert!(micros_many < 5_000, "EVALSHA took {micros_many} µs");
}

// ---------------------------------------------------------------------------------------------
// Failure behaviour

fn fast_breaker() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 3,
        open_base: Duration::from_millis(300),
        open_max: Duration::from_secs(2),
        probe_lease: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn a_dead_redis_fails_fast_opens_the_breaker_and_recovers_after_a_restart() {
    let mut server = Server::start();
    let mut cfg = config(&server.url());
    cfg.op_timeout = Duration::from_millis(250);
    cfg.breaker = fast_breaker();
    let l2 = L2::new(cfg).unwrap();
    l2.set_entry("/k", b"v", Duration::from_secs(60))
        .await
        .unwrap();

    server.kill();
    let bound = Duration::from_millis(250 + 100);
    for i in 0..3 {
        let started = Instant::now();
        let e = l2.get_entry("/k").await.unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(e, Error::Unavailable(_) | Error::Timeout { .. }),
            "call {i}: {e}"
        );
        assert!(took < bound, "call {i} took {took:?}");
    }
    assert_eq!(l2.breaker().state(), State::Open);

    // Open: turned away at once, without I/O.
    let rejected = l2.breaker().stats().rejected;
    let started = Instant::now();
    for _ in 0..100 {
        let e = l2.update_tags(&tags(&["t"]), None).await.unwrap_err();
        assert!(
            matches!(&e, Error::Unavailable(m) if m == "circuit open"),
            "{e}"
        );
    }
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(l2.breaker().stats().rejected, rejected + 100);

    // A restarted (empty) Redis on the same port: the first probe after the open period
    // succeeds and closes the breaker.
    // A real outage: long enough for the connection manager's own reconnect attempts to have
    // failed (it would fail the first call after the restart while reconnecting in the
    // background; a dropped connection is replaced inline instead, so the probe succeeds).
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.restart();
    tokio::time::sleep(l2.breaker().stats().open_for).await;
    assert_eq!(l2.get_entry("/k").await.unwrap(), None);
    assert_eq!(l2.breaker().state(), State::Closed);
    l2.set_entry("/k", b"again", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(&l2.get_entry("/k").await.unwrap().unwrap()[..], b"again");
    // The scripts were lost with the restart; they are loaded again transparently.
    l2.update_tags(&tags(&["t"]), None).await.unwrap();
}

#[tokio::test]
async fn a_failed_first_connect_is_retried_by_later_calls() {
    // Nothing listens on the port yet.
    let port = free_port(false);
    let mut cfg = config(&format!("redis://127.0.0.1:{port}"));
    cfg.breaker.failure_threshold = 100;
    let l2 = L2::new(cfg).unwrap();
    let e = l2.get_entry("/k").await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e}");

    let Some(_server) = Server::start_on(port, &[]) else {
        // Someone else took the port in between: nothing to conclude.
        return;
    };
    assert_eq!(l2.get_entry("/k").await.unwrap(), None);
}

#[tokio::test]
async fn op_timeout_is_honoured_against_a_paused_redis() {
    let server = Server::start();
    let mut cfg = config(&server.url());
    cfg.op_timeout = Duration::from_millis(200);
    let l2 = L2::new(cfg).unwrap();
    l2.update_tags(&tags(&["warm-up"]), None).await.unwrap();
    let mut control = raw(&server.url()).await;

    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .arg("ALL")
        .query_async::<()>(&mut control)
        .await
        .unwrap();
    let paused_at = Instant::now();
    for op in 0..2 {
        let started = Instant::now();
        let e = if op == 0 {
            l2.get_entry("/k").await.unwrap_err()
        } else {
            l2.update_tags(&tags(&["t"]), None).await.unwrap_err()
        };
        let took = started.elapsed();
        assert!(matches!(e, Error::Timeout { ms: 200, .. }), "{e}");
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(400),
            "took {took:?}"
        );
    }
    assert_eq!(l2.breaker().stats().consecutive_failures, 2);

    // Once the pause is over the same connection serves again.
    let remaining = Duration::from_millis(1100).saturating_sub(paused_at.elapsed());
    tokio::time::sleep(remaining).await;
    assert_eq!(l2.get_entry("/k").await.unwrap(), None);
    assert_eq!(l2.breaker().stats().consecutive_failures, 0);
}

// ---------------------------------------------------------------------------------------------
// Cluster

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_api_works_on_a_redis_cluster() {
    let cluster = Cluster::start().await;
    let mut cfg = config(&cluster.urls()[0]);
    cfg.urls = cluster.urls();
    cfg.op_timeout = Duration::from_secs(2);
    let l2 = L2::new(cfg).unwrap();

    // Entries spread over the slots of every node.
    for i in 0..60 {
        let key = format!("/page/{i}");
        l2.set_entry(&key, key.as_bytes(), Duration::from_secs(60))
            .await
            .unwrap();
    }
    for i in 0..60 {
        let key = format!("/page/{i}");
        assert_eq!(
            &l2.get_entry(&key).await.unwrap().unwrap()[..],
            key.as_bytes()
        );
    }
    let mut per_node = Vec::new();
    for node in &cluster.nodes {
        let mut c = raw(&node.url()).await;
        let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
        per_node.push(n);
    }
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() == 3,
        "entries not spread: {per_node:?}"
    );

    // Every tag key in one slot.
    let keys: &Keys = l2.keys();
    let mut c = raw(&cluster.nodes[0].url()).await;
    let mut slots = Vec::new();
    for k in [
        keys.tag_state(),
        keys.tag_index(),
        keys.tag_log(),
        keys.epoch(),
    ] {
        let slot: u64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
        slots.push(slot);
    }
    assert!(slots.windows(2).all(|w| w[0] == w[1]), "{slots:?}");

    // Scripts: no CROSSSLOT, the same behaviour as on one server.
    let t = l2.server_time().await.unwrap();
    let u = l2
        .update_tags(&tags(&["a", "b"]), Some(Durations { expire: Some(5.0) }))
        .await
        .unwrap();
    assert!(u.server_now_ms >= t.server_ms);
    let (cursor, all, lost) = resync(l2.refresh(&LogCursor::default()).await.unwrap());
    assert!(!lost);
    assert_eq!(all.len(), 2);
    let u2 = l2.update_tags(&tags(&["c"]), None).await.unwrap();
    let (_, changes, _) = incremental(l2.refresh(&cursor).await.unwrap());
    assert_eq!(changes, u2.states);

    l2.delete_entry("/page/0").await.unwrap();
    assert_eq!(l2.get_entry("/page/0").await.unwrap(), None);
}

#[tokio::test]
async fn a_script_redis_forgot_is_sent_again_as_eval() {
    let server = Server::start();
    let l2 = L2::new(config(&server.url())).unwrap();
    let mut c = raw(&server.url()).await;
    l2.update_tags(&tags(&["t"]), None).await.unwrap();
    // Redis restarted, or someone flushed its script cache.
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    l2.update_tags(&tags(&["t"]), None).await.unwrap();
    l2.update_tags(&tags(&["t"]), None).await.unwrap();
    let calls = command_calls(&mut c).await;
    // One NOSCRIPT, answered by one EVAL with the source (which loads it); then EVALSHA again.
    assert_eq!(calls.get("evalsha"), Some(&2), "{calls:?}");
    assert_eq!(calls.get("eval"), Some(&1), "{calls:?}");
    assert!(
        !calls.keys().any(|k| k.starts_with("script")),
        "no SCRIPT LOAD round trip: {calls:?}"
    );
    assert_eq!(l2.breaker().stats().consecutive_failures, 0);
}

/// `INFO <section>`.
async fn info(c: &mut MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(c)
        .await
        .unwrap()
}

/// Connections Redis accepted so far.
async fn connections_received(c: &mut MultiplexedConnection) -> u64 {
    info(c, "stats")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_demoted_primary_trips_the_breaker_and_its_connection_is_replaced() {
    let primary = Server::start();
    let other = Server::start();
    let mut cfg = config(&primary.url());
    cfg.breaker = fast_breaker();
    let l2 = L2::new(cfg).unwrap();
    let mut c = raw(&primary.url()).await;
    l2.set_entry("/k", b"v", Duration::from_secs(60))
        .await
        .unwrap();
    // A failover demoted the server this connection points at: writes are refused.
    redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(other.port)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let before = connections_received(&mut c).await;
    let e = l2
        .set_entry("/k", b"w", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Unavailable(m) if m.contains("READONLY")),
        "{e}"
    );
    assert_eq!(l2.breaker().stats().consecutive_failures, 1);
    // The next call does not reuse the connection to the demoted server: it connects anew.
    redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    l2.set_entry("/k", b"x", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(connections_received(&mut c).await, before + 1);
    assert_eq!(l2.breaker().stats().consecutive_failures, 0);
    assert_eq!(&l2.get_entry("/k").await.unwrap().unwrap()[..], b"x");
}
