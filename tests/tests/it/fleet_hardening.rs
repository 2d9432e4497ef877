//! The fleet's records against hostile or busy nodes, on a real controller
//! over loopback mTLS: operator decisions survive concurrent reports and
//! restarts, node input is bounded, node lists page, and enrollment cannot
//! write under or take names it does not own.

use ballast_agent::client::{self, Trust};
use ballast_proto::limits::{MAX_PAGE_SIZE, MAX_RESOURCE_ID_BYTES};
use ballast_proto::pb;
use ballast_tests::{TestAgent, TestController};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn failing_report(ids: impl IntoIterator<Item = String>) -> pb::RunReport {
    pb::RunReport {
        revision: 0,
        state_hash: "sha256:x".into(),
        trigger: pb::Trigger::Resync.into(),
        resources: ids
            .into_iter()
            .map(|id| pb::ResourceOutcome {
                id,
                outcome: pb::Outcome::Failed as i32,
                error: "permission denied".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

async fn token(ctl: &TestController, name: &str, replace_revoked: bool) -> String {
    ctl.admin()
        .await
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 600,
            name: name.into(),
            replace_revoked,
            ..Default::default()
        })
        .await
        .expect("token created")
        .into_inner()
        .token
}

async fn enroll(ctl: &TestController, token: &str, name: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir().unwrap();
    client::enroll(dir.path(), &ctl.controller(), token, &ctl.fingerprint, name)
        .await
        .map(|e| e.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_and_labels_survive_concurrent_reports() {
    let mut ctl = TestController::start().await;
    let agent = TestAgent::enroll(&ctl, "busy-1", &[("role", "web")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for i in 0..24 {
        let mut client = agent.agent_client().await.unwrap();
        let (stop, sent) = (stop.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let report = failing_report([format!("file[/srv/{i}-{n}]")]);
                if client.report(report).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut admin = ctl.admin().await;
    while sent.load(Ordering::Relaxed) < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each operator call succeeds on its first try while the node reports.
    let mut labels = Vec::new();
    for round in 0..10 {
        let r = admin
            .label_node(pb::LabelNodeRequest {
                name: "busy-1".into(),
                labels: [("round".to_string(), round.to_string())].into(),
            })
            .await;
        labels.push(r.map(|_| ()));
    }
    let revoked = admin
        .revoke_node(pb::NodeName {
            name: "busy-1".into(),
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Stop the senders before any assertion, so a failure ends the test.
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    for (round, r) in labels.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("label round {round} on the first call: {e:?}"));
    }
    revoked.expect("revoke on the first call");
    assert!(sent.load(Ordering::Relaxed) >= 50);

    ctl.restart().await;
    let node = ctl.node("busy-1").await.expect("node listed");
    assert_eq!(node.status(), pb::NodeStatus::Revoked, "{node:?}");
    assert_eq!(node.labels.get("round").map(String::as_str), Some("9"));
    assert_eq!(node.labels.get("role").map(String::as_str), Some("web"));
    let mut client = agent.agent_client().await.unwrap();
    let err = client
        .heartbeat(pb::HeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = client.watch(pb::WatchRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_reports_are_refused_and_the_store_stays_small() {
    let ctl = TestController::start().await;
    let agent = TestAgent::enroll(&ctl, "loud-1", &[]).await;
    let _quiet = TestAgent::enroll(&ctl, "quiet-1", &[]).await;
    let mut client = agent.agent_client().await.unwrap();

    let huge = format!("file[/{}]", "x".repeat(4_000_000));
    for _ in 0..16 {
        let err = client
            .report(failing_report([huge.clone()]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("resources[0].id")
                && err.message().contains(&MAX_RESOURCE_ID_BYTES.to_string()),
            "{}",
            err.message()
        );
    }
    let err = client
        .put_facts(pb::Facts {
            json: format!("{{\"a\":\"{}\"}}", "y".repeat(1_000_000)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("facts:"), "{}", err.message());

    // Reports just within the bounds, each different, 64 times: the fleet
    // views keep working and the store keeps one report, one timeline.
    for round in 0..64 {
        let ids = (0..600).map(|i| format!("file[/{round}/{i}/{}]", "z".repeat(4000)));
        client
            .report(failing_report(ids))
            .await
            .unwrap_or_else(|e| panic!("report within the bounds, round {round}: {e:?}"));
    }
    let nodes = ctl.nodes().await;
    let loud = nodes.iter().find(|n| n.name == "loud-1").unwrap();
    assert_eq!(loud.failed_count, 600);
    assert!(
        loud.failed_resources.len() <= 16,
        "{}",
        loud.failed_resources.len()
    );
    let detail = ctl.node_detail("loud-1").await;
    let timeline_bytes: usize = detail
        .timeline
        .iter()
        .map(|e| e.stage.len() + e.detail.len())
        .sum();
    assert!(timeline_bytes <= 40 * 1024, "{timeline_bytes}");
    assert!(
        detail
            .timeline
            .iter()
            .any(|e| e.detail.contains("…[truncated")),
        "long details are cut visibly"
    );
    let (code, _) = ctl.cli(&["nodes"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let store = std::fs::metadata(ctl.data_dir().join("ballast.redb"))
        .unwrap()
        .len();
    eprintln!("store after 64 reports at the bounds: {store} bytes");
    assert!(store < 96 * 1024 * 1024, "store grew to {store} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lists_page_in_name_order() {
    let ctl = TestController::start().await;
    let mut want = Vec::new();
    for i in 0..7 {
        let name = format!("page-{i}");
        TestAgent::enroll(&ctl, &name, &[]).await;
        want.push(name);
    }
    for i in 0..3 {
        let name = format!("page-r{i}");
        token(&ctl, &name, false).await;
        want.push(name);
    }
    want.sort();
    let mut admin = ctl.admin().await;
    let mut got = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let resp = admin
            .list_nodes(pb::ListNodesRequest {
                page_size: 3,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(resp.nodes.len() <= 3, "{}", resp.nodes.len());
        got.extend(resp.nodes.into_iter().map(|n| n.name));
        if resp.next_page_token.is_empty() {
            break;
        }
        page_token = resp.next_page_token;
    }
    assert_eq!(got, want);
    assert_eq!(pages, 4);
    // A filter pages over matching nodes only; the default page holds all here.
    let all = admin
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.nodes.len(), 10);
    assert!(all.next_page_token.is_empty());
    let capped = admin
        .list_nodes(pb::ListNodesRequest {
            page_size: MAX_PAGE_SIZE * 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capped.nodes.len(), 10);
    let err = admin
        .list_nodes(pb::ListNodesRequest {
            page_token: "after:../../etc".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("page_token"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_unnamed_tokens_write_under_no_chosen_name() {
    let ctl = TestController::start().await;
    let spent = ctl.token(&[]).await;
    enroll(&ctl, &spent, "real-1")
        .await
        .expect("first use enrolls");
    let before = ctl.node_detail("real-1").await.timeline;

    let ca_pem = std::fs::read_to_string(ctl.data_dir().join("pki/ca.pem")).unwrap();
    let channel = client::channel(&ctl.controller(), &Trust::Ca(ca_pem), None)
        .await
        .unwrap();
    let mut enrollment = pb::enrollment_client::EnrollmentClient::new(channel);
    let mut codes: HashMap<tonic::Code, usize> = HashMap::new();
    for i in 0..200 {
        let name = if i % 50 == 0 {
            "real-1".to_owned()
        } else {
            format!("squat-{i}")
        };
        let err = enrollment
            .enroll(pb::EnrollRequest {
                token: spent.clone(),
                name,
                csr_der: Vec::new(),
            })
            .await
            .unwrap_err();
        *codes.entry(err.code()).or_default() += 1;
    }
    assert_eq!(
        codes.get(&tonic::Code::PermissionDenied),
        Some(&200),
        "{codes:?}"
    );
    let nodes = ctl.nodes().await;
    assert_eq!(
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["real-1"],
        "no entry under a chosen name"
    );
    assert!(
        nodes
            .iter()
            .all(|n| n.status() != pb::NodeStatus::BootstrapFailed)
    );
    assert_eq!(ctl.node_detail("real-1").await.timeline, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_and_revoked_names_stay_with_their_owner() {
    let ctl = TestController::start().await;
    let bound = token(&ctl, "db-1", false).await;
    // An unnamed token cannot take a name a token reserves.
    let unnamed = ctl.token(&[]).await;
    let err = enroll(&ctl, &unnamed, "db-1").await.unwrap_err();
    assert!(format!("{err:#}").contains("reserved"), "{err:#}");
    assert_eq!(enroll(&ctl, &bound, "ignored").await.unwrap(), "db-1");

    ctl.admin()
        .await
        .revoke_node(pb::NodeName {
            name: "db-1".into(),
        })
        .await
        .unwrap();
    // A revoked name: not for an unnamed token, nor for a bound one without
    // the operator's replace.
    let err = enroll(&ctl, &unnamed, "db-1").await.unwrap_err();
    assert!(format!("{err:#}").contains("--replace"), "{err:#}");
    let plain = token(&ctl, "db-1", false).await;
    let err = enroll(&ctl, &plain, "db-1").await.unwrap_err();
    assert!(format!("{err:#}").contains("was revoked"), "{err:#}");
    assert_eq!(
        ctl.node("db-1").await.unwrap().status(),
        pb::NodeStatus::Revoked
    );

    let replace = token(&ctl, "db-1", true).await;
    assert_eq!(enroll(&ctl, &replace, "db-1").await.unwrap(), "db-1");
    let stages: Vec<String> = ctl
        .node_detail("db-1")
        .await
        .timeline
        .into_iter()
        .map(|e| e.stage)
        .collect();
    assert!(
        stages.iter().any(|s| s == "revoked") && stages.last().unwrap() == "enrolled",
        "the old timeline is kept: {stages:?}"
    );
    // The unnamed token was never spent by the refusals.
    assert_eq!(enroll(&ctl, &unnamed, "web-9").await.unwrap(), "web-9");
}
