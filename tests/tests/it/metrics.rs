//! `/metrics` on the controller's port, read as Prometheus reads it: over
//! HTTPS by a real client (Python's `ssl`), parsed by the Prometheus
//! project's own OpenMetrics parser (Debian's `python3-prometheus-client`),
//! and checked against `ballast health -o json`. Also who may scrape:
//! the admin certificate or the scrape token, never a node or nobody.

use ballast_proto::pb;
use ballast_tests::{TestAgent, TestController, start_ok_and_broken};
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
    let pki = ctl.data_dir().join("pki");
    let (cert, key) = cert
        .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
        .unwrap_or_default();
    let out = Command::new(PYTHON)
        .args(["-I", "-c", SCRAPE])
        .arg(format!("https://{}/metrics", ctl.controller()))
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
