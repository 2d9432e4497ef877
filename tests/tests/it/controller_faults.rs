//! The controller under faults, as a real process: SIGKILL during concurrent
//! applies, and a data dir that fills up.

use ballast_controller::store::{RedbStore, Store};
use ballast_proto::pb;
use ballast_tests::ControllerProcess;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUNDS: usize = 24;
const CLIENTS: usize = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// An apply the controller acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    revision: u64,
    hash: String,
    message: String,
    content: String,
}

fn spec(tag: &str) -> String {
    format!(
        r#"
roles:
  base:
    directories: [{{path: /etc/app, mode: "0755"}}]
    files: [{{path: /etc/app/tag, content: "{tag}\n"}}]
groups:
  all:
    roles: [base]
"#
    )
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

/// Applies unique content in a loop until `stop`, recording every acknowledgement.
async fn applier(
    conn: ballast_controller::cli::Conn,
    client: usize,
    round: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
) {
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        let Ok(Ok(mut admin)) =
            tokio::time::timeout(CALL_TIMEOUT, ballast_controller::cli::connect(&conn)).await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            seq += 1;
            let message = format!("round {round} client {client} apply {seq}");
            let content = spec(&message);
            let call = admin.apply(pb::ApplyRequest {
                sources: vec![pb::SourceFile {
                    name: "spec.yaml".into(),
                    content: content.clone(),
                }],
                author: "fault-test".into(),
                message: message.clone(),
            });
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    assert!(resp.created, "unique content creates a revision: {message}");
                    acked.lock().unwrap().push(Acked {
                        revision: resp.revision,
                        hash: resp.hash,
                        message,
                        content,
                    });
                }
                // The controller died under us: outcome unknown, reconnect.
                _ => break,
            }
        }
    }
}

/// Every acknowledged revision is in the history with its hash and message.
async fn check_history(ctl: &ControllerProcess, acked: &[Acked]) {
    let mut admin = ctl.admin().await.expect("admin connects");
    let history = admin
        .history(pb::HistoryRequest { limit: u32::MAX })
        .await
        .expect("history")
        .into_inner()
        .revisions;
    for a in acked {
        let found = history.iter().find(|r| r.number == a.revision);
        match found {
            Some(r) => assert!(
                r.hash == a.hash && r.message == a.message,
                "revision {} changed: stored {:?} / {:?}, acknowledged {:?} / {:?}",
                a.revision,
                r.hash,
                r.message,
                a.hash,
                a.message
            ),
            None => panic!(
                "acknowledged revision {} ({}) is missing after a kill",
                a.revision, a.message
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_revisions_survive_controller_kills() {
    let started = Instant::now();
    let mut ctl = ControllerProcess::start("").await;
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|client| {
                tokio::spawn(applier(
                    ctl.conn(),
                    client,
                    round,
                    stop.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100 + random_below(400))).await;
        ctl.kill();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("applier");
        }
        ctl.restart().await;
        let acked = acked.lock().unwrap().clone();
        check_history(&ctl, &acked).await;
    }
    ctl.kill();
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} acknowledged revisions over {ROUNDS} kills in {:?}",
        acked.len(),
        started.elapsed()
    );
    assert!(
        acked.len() >= ROUNDS,
        "too few applies were acknowledged to mean anything: {}",
        acked.len()
    );
    // The exact sources, read from the store itself.
    let store = RedbStore::open(&ctl.data_dir().join("ballast.redb")).expect("open the store");
    for a in &acked {
        let key = format!("revisions/{:020}", a.revision);
        let entry = store
            .get(&key)
            .expect("read the store")
            .unwrap_or_else(|| panic!("{key} is missing"));
        let record: serde_json::Value = serde_json::from_slice(&entry.value).expect("JSON record");
        assert_eq!(
            record["sources"],
            serde_json::json!([["spec.yaml", a.content]]),
            "{key} holds other content than was acknowledged"
        );
    }
}
