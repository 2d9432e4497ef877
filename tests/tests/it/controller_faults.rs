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
                allow_prune: true,
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

fn apply_request(tag: &str) -> pb::ApplyRequest {
    pb::ApplyRequest {
        sources: vec![pb::SourceFile {
            name: "spec.yaml".into(),
            content: spec(tag),
        }],
        author: "fault-test".into(),
        message: tag.into(),
        allow_prune: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_dir_is_named_reads_go_on_and_writes_resume() {
    let Some(fs) = ballast_tests::Tmpfs::mount("48m") else {
        return;
    };
    let mut ctl = ControllerProcess::start_at(Some(&fs.path().join("data")), "").await;
    let mut admin = ctl.admin().await.expect("admin connects");
    let mut acked = Vec::new();
    let big = "x".repeat(256 << 10);
    let resp = admin.apply(apply_request("first")).await.expect("apply");
    acked.push(resp.into_inner().revision);

    let filler = fs.fill();
    let mut refused = None;
    for i in 0..500 {
        match admin.apply(apply_request(&format!("{i} {big}"))).await {
            Ok(r) => acked.push(r.into_inner().revision),
            Err(s) => {
                refused = Some(s);
                break;
            }
        }
    }
    let refused = refused.expect("applies fail once the data dir is full");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains("no space left on the controller's data dir"),
        "the client is told why: {:?}",
        refused.message()
    );
    // Reads are still served, again and again, and see every acknowledged revision.
    for _ in 0..3 {
        let history = admin
            .history(pb::HistoryRequest { limit: 1000 })
            .await
            .unwrap_or_else(|e| panic!("history while full: {e:?}\n{}", ctl.log()))
            .into_inner()
            .revisions;
        for n in &acked {
            assert!(
                history.iter().any(|r| r.number == *n),
                "revision {n} listed"
            );
        }
        admin
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .expect("nodes while full");
        let again = admin.apply(apply_request("while full")).await.unwrap_err();
        assert_eq!(again.code(), tonic::Code::ResourceExhausted);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Space comes back: writes resume without a restart.
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let resumed = loop {
        match admin.apply(apply_request("after")).await {
            Ok(r) => break r.into_inner(),
            Err(s) if Instant::now() < deadline => {
                eprintln!("not yet: {}", s.message());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("writes did not resume after space was freed: {s:?}"),
        }
    };
    acked.push(resumed.revision);
    ctl.token().await;

    // Nothing acknowledged was lost, across a restart too.
    ctl.restart().await;
    let history = ctl
        .admin()
        .await
        .unwrap()
        .history(pb::HistoryRequest { limit: 1000 })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    for n in &acked {
        assert!(history.iter().any(|r| r.number == *n), "revision {n} kept");
    }
    ctl.kill();
    drop(fs);
}
