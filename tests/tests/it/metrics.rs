//! `/metrics` on the controller's port, read as Prometheus reads it: over
//! HTTPS by a real client (Python's `ssl`), parsed by the Prometheus
//! project's own OpenMetrics parser (Debian's `python3-prometheus-client`),
//! and checked against `ballast health -o json`. Also who may scrape:
//! the admin certificate or the scrape token, never a node or nobody; the
//! etcd figures (leader, watch lag) of two controllers on a real cluster;
//! and the host figures' bounded rate, counted in store writes.

use ballast_proto::pb;
use ballast_tests::etcd::EtcdCluster;
use ballast_tests::{ControllerProcess, TestAgent, TestController, start_ok_and_broken};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitCode};

/// The scraper: GET /metrics with an optional client certificate or bearer
/// token, then the OpenMetrics parser. Prints `{"status": N, "samples":
/// [[name, labels, value], ...]}`; a body the parser refuses is an error.
const SCRAPE: &str = r#"
import json, ssl, sys, urllib.request, urllib.error
from prometheus_client.openmetrics.parser import text_string_to_metric_families
url, ca, cert, key, token = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
if cert:
    ctx.load_cert_chain(cert, key)
req = urllib.request.Request(url)
if token:
    req.add_header("Authorization", "Bearer " + token)
try:
    resp = urllib.request.urlopen(req, context=ctx, timeout=10)
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "samples": []}))
    sys.exit(0)
body = resp.read().decode()
samples = []
for family in text_string_to_metric_families(body):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps({"status": resp.status, "content_type": resp.headers["Content-Type"], "samples": samples}))
"#;

/// The Python that has Debian's prometheus-client (not a pyenv one).
const PYTHON: &str = "/usr/bin/python3";

fn parser_installed() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: apt-get install python3-prometheus-client");
    }
    ok
}

struct Scrape {
    status: u64,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    content_type: String,
}

impl Scrape {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }
}

fn scrape(ctl: &TestController, cert: Option<(&Path, &Path)>, token: &str) -> Scrape {
    scrape_at(&ctl.controller(), ctl.data_dir(), cert, token)
}

/// Scrapes the controller at `addr` whose data dir (for its CA) is `data_dir`.
fn scrape_at(addr: &str, data_dir: &Path, cert: Option<(&Path, &Path)>, token: &str) -> Scrape {
    let pki = data_dir.join("pki");
    let (cert, key) = cert
        .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
        .unwrap_or_default();
    let out = Command::new(PYTHON)
        .args(["-I", "-c", SCRAPE])
        .arg(format!("https://{addr}/metrics"))
        .arg(pki.join("ca.pem"))
        .args([cert, key, token.to_owned()])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "scrape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("scraper JSON");
    Scrape {
        status: doc["status"].as_u64().unwrap(),
        content_type: doc["content_type"].as_str().unwrap_or("").to_owned(),
        samples: doc["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s[0].as_str().unwrap().to_owned(),
                    serde_json::from_value(s[1].clone()).unwrap(),
                    s[2].as_f64().unwrap(),
                )
            })
            .collect(),
    }
}

fn admin_cert(ctl: &TestController) -> (std::path::PathBuf, std::path::PathBuf) {
    let pki = ctl.data_dir().join("pki");
    (pki.join("admin.pem"), pki.join("admin.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_openmetrics_and_agree_with_ballast_health() {
    if !parser_installed() {
        return;
    }
    let ctl = TestController::start().await;
    let mut agents =
        start_ok_and_broken(&ctl, &[("m1", "ok"), ("m2", "ok"), ("m3", "broken")]).await;
    // A token created for a name that never enrolls: a pending node.
    ctl.admin()
        .await
        .create_token(pb::CreateTokenRequest {
            name: "later".into(),
            ..Default::default()
        })
        .await
        .expect("token");

    let (cert, key) = admin_cert(&ctl);
    let got = scrape(&ctl, Some((&cert, &key)), "");
    assert_eq!(got.status, 200);
    assert!(
        got.content_type.starts_with("application/openmetrics-text"),
        "{}",
        got.content_type
    );

    // Node counts, status by status, are what `ballast health -o json` says.
    let (code, out) = ctl.cli(&["health", "-o", "json"]).await;
    assert_eq!(code, ExitCode::FAILURE, "one node fails: {out}");
    let health: serde_json::Value = serde_json::from_str(&out).expect("health JSON");
    let statuses = health["statuses"].as_object().expect("statuses");
    assert_eq!(statuses.get("converged").and_then(|v| v.as_u64()), Some(2));
    assert_eq!(statuses.get("failed").and_then(|v| v.as_u64()), Some(1));
    assert_eq!(statuses.get("pending").and_then(|v| v.as_u64()), Some(1));
    for status in ballast_proto::enums::NodeStatus::ALL {
        let want = statuses
            .get(status.as_str())
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as f64;
        assert_eq!(
            got.value("ballast_nodes", &[("status", status.as_str())]),
            Some(want),
            "ballast_nodes{{status={}}}",
            status.as_str()
        );
    }
    let total: f64 = got
        .samples
        .iter()
        .filter(|(n, _, _)| n == "ballast_nodes")
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(total, health["nodes"].as_u64().unwrap() as f64);

    // The rest: each figure from what really happened.
    assert_eq!(
        got.value("ballast_enrollments_total", &[("result", "ok")]),
        Some(3.0)
    );
    assert_eq!(
        got.value("ballast_revisions_created_total", &[("kind", "apply")]),
        Some(1.0)
    );
    assert_eq!(got.value("ballast_watch_streams", &[]), Some(3.0));
    assert_eq!(got.value("ballast_leader", &[]), Some(1.0));
    assert!(
        got.value(
            "ballast_rpc_requests_total",
            &[("method", "Admin/Apply"), ("code", "Ok")]
        ) >= Some(1.0)
    );
    assert!(
        got.value(
            "ballast_rpc_duration_seconds_count",
            &[("method", "Agent/Report")]
        ) >= Some(3.0)
    );
    assert!(got.value("ballast_agent_reports_total", &[]) >= Some(3.0));
    assert!(got.value("ballast_agent_resources_total", &[("outcome", "failed")]) >= Some(1.0));
    assert!(got.value("ballast_agent_run_duration_seconds_count", &[]) >= Some(3.0));
    assert!(
        got.value(
            "ballast_store_operation_duration_seconds_count",
            &[("op", "txn")]
        ) >= Some(1.0)
    );
    assert!(
        got.value(
            "ballast_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ) == Some(1.0)
    );
    // No series carries a node's name.
    for (name, labels, _) in &got.samples {
        for v in labels.values() {
            assert!(
                !["m1", "m2", "m3", "later"].contains(&v.as_str()),
                "{name} has a node's name as a label: {labels:?}"
            );
        }
    }

    // A refused call is counted under its code.
    let bad = ctl.apply("roles: {x: {files: [{path: relative}]}}").await;
    assert!(bad.is_err());
    let got = scrape(&ctl, Some((&cert, &key)), "");
    assert!(
        got.value(
            "ballast_rpc_requests_total",
            &[("method", "Admin/Apply"), ("code", "InvalidArgument")]
        ) >= Some(1.0),
        "{:?}",
        got.samples
            .iter()
            .filter(|s| s.0 == "ballast_rpc_requests_total")
            .collect::<Vec<_>>()
    );
    for agent in &mut agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_admin_certificate_or_the_scrape_token() {
    if !parser_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("scrape-token");
    let token = "0123456789abcdef0123456789abcdef-scrape";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = token_file.clone();
    let ctl = TestController::start_with(move |cfg| cfg.metrics_token_file = Some(file)).await;
    let mut agent = TestAgent::enroll(&ctl, "scraped", &[]).await;

    // Nobody, a wrong token, a node's certificate: refused, with HTTP codes.
    assert_eq!(scrape(&ctl, None, "").status, 401);
    assert_eq!(scrape(&ctl, None, "not-the-token").status, 401);
    let node = (
        agent.state.path().join("node.pem"),
        agent.state.path().join("node.key"),
    );
    assert!(node.0.exists(), "the node's certificate is at {:?}", node.0);
    assert_eq!(scrape(&ctl, Some((&node.0, &node.1)), "").status, 403);

    // The token, and the admin certificate: served.
    let got = scrape(&ctl, None, token);
    assert_eq!(got.status, 200);
    assert_eq!(
        got.value("ballast_enrollments_total", &[("result", "ok")]),
        Some(1.0)
    );
    let (cert, key) = admin_cert(&ctl);
    assert_eq!(scrape(&ctl, Some((&cert, &key)), "").status, 200);
    agent.stop().await;

    // A token file others can read is refused at start, naming the fix.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = ballast_controller::config::ServeConfig::defaults();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.data_dir = dir.path().join("data");
    cfg.metrics_token_file = Some(token_file.clone());
    let err = match ballast_controller::server::start(&cfg).await {
        Ok(_) => panic!("a world-readable scrape token file was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("chmod 600") && err.contains("scrape-token"),
        "{err}"
    );
}

/// The admin scrape of a controller process.
fn scrape_process(ctl: &ControllerProcess) -> Scrape {
    let pki = ctl.data_dir().join("pki");
    let (cert, key) = (pki.join("admin.pem"), pki.join("admin.key"));
    scrape_at(&ctl.controller(), &ctl.data_dir(), Some((&cert, &key)), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_controllers_report_one_leader_and_a_small_watch_lag() {
    if !parser_installed() {
        return;
    }
    let Some(cluster) = EtcdCluster::start(3) else {
        return;
    };
    let url = cluster.url();
    let a = ControllerProcess::start_with_args("", &["--store", &url]).await;
    let b = ControllerProcess::start_with_args("", &["--store", &url]).await;
    let applied = a
        .apply("roles: {base: {directories: [{path: /etc/app}]}}\ngroups: {all: {roles: [base]}}\n")
        .await
        .expect("apply on A");
    assert!(applied.created);

    // Exactly one of the two holds the leader key, once elected.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let leaders = loop {
        let leaders: Vec<f64> = [&a, &b]
            .iter()
            .map(|c| {
                scrape_process(c)
                    .value("ballast_leader", &[])
                    .expect("ballast_leader")
            })
            .collect();
        if leaders.iter().sum::<f64>() == 1.0 || std::time::Instant::now() > deadline {
            break leaders;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        leaders == [1.0, 0.0] || leaders == [0.0, 1.0],
        "exactly one leader: {leaders:?}"
    );

    // B's watches delivered A's apply: the lag is there, and nothing (a
    // scrape waits 1 s for confirmations; a loaded machine may need more).
    for ctl in [&b, &a] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let got = scrape_process(ctl);
            let lag = (
                got.value("ballast_store_watch_lag_revisions", &[]),
                got.value("ballast_store_watch_lag_seconds", &[]),
            );
            assert!(lag.0.is_some() && lag.1.is_some(), "no watch lag: {lag:?}");
            if lag == (Some(0.0), Some(0.0)) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "watch lag on {}: {lag:?}",
                ctl.controller()
            );
        }
    }
}

/// The lag once the watches confirmed, or the last measure after 10 tries
/// (each waits up to `WATCH_LAG_WAIT`).
fn settled_lag(store: &dyn ballast_controller::store::Store) -> (u64, f64) {
    let mut lag = None;
    for _ in 0..10 {
        let l = store.watch_lag().expect("a live watch");
        lag = Some((l.revisions, l.seconds));
        if l.revisions == 0 {
            break;
        }
    }
    lag.unwrap()
}

/// The watch-lag measure itself, on the store: a watch nobody reads falls
/// behind by what it has not delivered; writes outside its prefix are no
/// lag (etcd's progress notification says so); read up, it is current.
#[test]
fn watch_lag_counts_only_what_a_watch_has_not_delivered() {
    use ballast_controller::store::{Op, Store};
    use tokio_stream::StreamExt;
    let Some(cluster) = EtcdCluster::start(1) else {
        return;
    };
    let store = cluster.store("/lag/");
    assert_eq!(store.watch_lag(), None, "no watch, nothing to measure");
    let put = |key: String| {
        assert!(store.txn(&[], &[Op::Put(key, b"v".to_vec())]).unwrap());
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut watch = store.watch("watched/", 0).unwrap();

    // Writes elsewhere only: the watch confirms it has everything.
    for i in 0..20 {
        put(format!("elsewhere/{i}"));
    }
    assert_eq!(settled_lag(&store), (0, 0.0));

    // 200 changes under the prefix, read by nobody: the watch's buffer
    // fills and the rest is lag.
    for i in 0..200 {
        put(format!("watched/{i}"));
    }
    let lag = store.watch_lag().expect("a live watch");
    assert!(lag.revisions >= 100 && lag.seconds > 0.0, "{lag:?}");

    // Read up: no lag.
    rt.block_on(async {
        let mut seen = 0;
        while seen < 200 {
            match watch.next().await {
                Some(ballast_controller::store::WatchEvent::Changes { changes, .. }) => {
                    seen += changes.len()
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert_eq!(settled_lag(&store), (0, 0.0));
    drop(watch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_figures_reach_node_show_and_repeated_passes_write_nothing() {
    if !parser_installed() {
        return;
    }
    let ctl = TestController::start().await;
    let mut agent = TestAgent::enroll(&ctl, "h1", &[]).await;
    agent.start(std::time::Duration::from_secs(3600));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let host = loop {
        if let Some(h) = ctl.node_detail("h1").await.host {
            break h;
        }
        assert!(std::time::Instant::now() < deadline, "no host figures");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let figures = host.figures.expect("figures");
    assert!(figures.memory_total_bytes > 0 && figures.uptime_seconds > 0);
    assert_eq!(figures.root.as_ref().map(|d| d.mount.as_str()), Some("/"));
    assert!(figures.state.as_ref().is_some_and(|d| d.total_bytes > 0));

    let (_, text) = ctl.cli(&["node", "show", "h1"]).await;
    assert!(
        text.contains("host:      load     ") && text.contains("\n           disk     / "),
        "{text}"
    );
    let (_, json) = ctl.cli(&["node", "show", "h1", "-o", "json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&json).expect("node show JSON");
    assert_eq!(
        doc["host"]["memory"]["total_bytes"].as_u64(),
        Some(figures.memory_total_bytes),
        "{doc}"
    );

    // Passes go on (a heartbeat is one), and none of them sends or writes.
    let (cert, key) = admin_cert(&ctl);
    let counts = |s: &Scrape| {
        (
            s.value(
                "ballast_store_operation_duration_seconds_count",
                &[("op", "txn")],
            ),
            s.value(
                "ballast_rpc_requests_total",
                &[("method", "Agent/PutHostFigures"), ("code", "Ok")],
            ),
            s.value(
                "ballast_rpc_requests_total",
                &[("method", "Agent/Heartbeat"), ("code", "Ok")],
            )
            .unwrap_or(0.0),
        )
    };
    let (txns, sends, beats) = counts(&scrape(&ctl, Some((&cert, &key)), ""));
    assert_eq!(sends, Some(1.0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let later = loop {
        let later = counts(&scrape(&ctl, Some((&cert, &key)), ""));
        if later.2 >= beats + 4.0 {
            break later;
        }
        assert!(std::time::Instant::now() < deadline, "no heartbeats");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!((later.0, later.1), (txns, sends), "passes sent or wrote");

    // However often a node sends them, the controller stores them at most
    // once per interval: these are acknowledged, not written.
    let mut client = agent.agent_client().await.expect("node client");
    for _ in 0..2 {
        client
            .put_host_figures(figures.clone())
            .await
            .expect("acknowledged");
    }
    let after = counts(&scrape(&ctl, Some((&cert, &key)), ""));
    assert_eq!(after.0, txns, "a store write within the interval");
    assert_eq!(after.1, Some(3.0));
    assert_eq!(
        ctl.node_detail("h1").await.host.map(|h| h.received_ms),
        Some(host.received_ms)
    );
    agent.stop().await;
}
