//! Identity from certificates only, deny by default, one-time tokens.

use ballast_agent::client::{self, ClientCert, Trust};
use ballast_controller::fleet::Clock;
use ballast_proto::pb;
use ballast_tests::{TestAgent, TestController};
use std::time::Duration;
use tokio_stream::StreamExt;

const SPEC: &str = r#"
roles:
  a: {files: [{path: /srv/a.txt, content: "for a"}]}
  b: {files: [{path: /srv/b.txt, content: "secret of b"}]}
groups:
  a: {match: {team: a}, roles: [a]}
  b: {match: {team: b}, roles: [b]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_only_its_own_state_and_writes_only_its_own_report() {
    let ctl = TestController::start().await;
    let a = TestAgent::enroll(&ctl, "node-a", &[("team", "a")]).await;
    let _b = TestAgent::enroll(&ctl, "node-b", &[("team", "b")]).await;
    ctl.apply(SPEC).await.unwrap();

    let mut client = a.agent_client().await.unwrap();
    let mut stream = client
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let doc = String::from_utf8(first.document).unwrap();
    assert!(
        doc.contains("\"name\":\"node-a\"") && doc.contains("/srv/a.txt"),
        "{doc}"
    );
    assert!(
        !doc.contains("secret of b") && !doc.contains("node-b"),
        "node A sees nothing of B: {doc}"
    );

    // A report sent with A's certificate lands on A, whatever it claims.
    let report = pb::RunReport {
        revision: 1,
        state_hash: "sha256:forged".into(),
        trigger: pb::Trigger::Change.into(),
        ..Default::default()
    };
    client.report(report).await.unwrap();
    let detail_b = ctl.node_detail("node-b").await;
    assert!(detail_b.last_report.is_none(), "B has no report");
    let detail_a = ctl.node_detail("node-a").await;
    assert_eq!(detail_a.last_report.unwrap().state_hash, "sha256:forged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_right_certificate_are_refused() {
    let ctl = TestController::start().await;
    let a = TestAgent::enroll(&ctl, "node-a", &[]).await;
    let ca_pem = std::fs::read_to_string(ctl.data_dir().join("pki/ca.pem")).unwrap();

    // No client certificate: admin and node methods are refused.
    let channel = client::channel(&ctl.controller(), &Trust::Ca(ca_pem.clone()), None)
        .await
        .unwrap();
    let err = pb::admin_client::AdminClient::new(channel.clone())
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = pb::agent_client::AgentClient::new(channel)
        .heartbeat(pb::HeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // A node certificate cannot call admin methods.
    let enrolled = client::Enrolled::load(a.state.path()).unwrap();
    let node_channel = enrolled.channel(None).await.unwrap();
    let err = pb::admin_client::AdminClient::new(node_channel)
        .create_token(pb::CreateTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // The admin certificate cannot pose as a node.
    let admin = ClientCert {
        cert_pem: std::fs::read_to_string(ctl.data_dir().join("pki/admin.pem")).unwrap(),
        key_pem: std::fs::read_to_string(ctl.data_dir().join("pki/admin.key")).unwrap(),
    };
    let channel = client::channel(&ctl.controller(), &Trust::Ca(ca_pem.clone()), Some(&admin))
        .await
        .unwrap();
    let err = pb::agent_client::AgentClient::new(channel)
        .watch(pb::WatchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // A certificate from a foreign CA: the TLS handshake fails.
    let foreign_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_ca = ca_params.self_signed(&foreign_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, foreign_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    leaf.distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "admin");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let _ = foreign_ca;
    let forged = ClientCert {
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    };
    let refused = match client::channel(&ctl.controller(), &Trust::Ca(ca_pem), Some(&forged)).await
    {
        Err(_) => true,
        Ok(ch) => pb::admin_client::AdminClient::new(ch)
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a foreign CA's certificate is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_without_a_restart() {
    let ctl = TestController::start().await;
    ctl.apply(SPEC).await.unwrap();
    let a = TestAgent::enroll(&ctl, "node-a", &[("team", "a")]).await;
    let mut client = a.agent_client().await.unwrap();
    let mut stream = client
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();

    let (code, out) = ctl.cli(&["node", "revoke", "node-a"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS, "{out}");
    // The open watch ends with a refusal, and the next call on the same connection fails.
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("watch ends promptly");
    assert_eq!(
        end.unwrap().unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let err = client
        .heartbeat(pb::HeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");
    assert_eq!(
        ctl.node("node-a").await.unwrap().status(),
        pb::NodeStatus::Revoked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_works_once_even_under_concurrency_and_never_after_expiry() {
    // The fleet's clock stands still until the test moves it: expiry is
    // tested without sleeping.
    let clock = Clock::manual();
    let ctl = TestController::start_with(|c| c.clock = clock.clone()).await;
    let token = ctl.token(&[("role", "web")]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (addr, fp, token) = (ctl.controller(), ctl.fingerprint.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let dir = tempfile::tempdir().unwrap();
            client::enroll(dir.path(), &addr, &token, &fp, &format!("racer-{i}"))
                .await
                .map(|r| r.name)
        }));
    }
    let mut ok = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(name) => ok.push(name),
            Err(e) => {
                assert!(
                    format!("{e:#}").contains("invalid, expired or already used"),
                    "{e:#}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(ok.len(), 1, "exactly one enrollment wins: {ok:?}");
    assert_eq!(refused, 7);
    let enrolled: Vec<pb::NodeSummary> = ctl
        .nodes()
        .await
        .into_iter()
        .filter(|n| n.status() != pb::NodeStatus::BootstrapFailed)
        .collect();
    assert_eq!(enrolled.len(), 1, "{enrolled:?}");
    assert_eq!(
        enrolled[0].labels.get("role").map(String::as_str),
        Some("web"),
        "the token's labels become the node's"
    );

    // Expired.
    let resp = ctl
        .admin()
        .await
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    clock.advance(Duration::from_millis(1200));
    let dir = tempfile::tempdir().unwrap();
    let err = client::enroll(
        dir.path(),
        &ctl.controller(),
        &resp.token,
        &ctl.fingerprint,
        "late",
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("invalid, expired or already used"),
        "{err:#}"
    );

    // A token bound to a name gives that name, whatever the node asks for.
    let bound = ctl
        .admin()
        .await
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 60,
            name: "bound-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let resp = client::enroll(
        dir.path(),
        &ctl.controller(),
        &bound.token,
        &ctl.fingerprint,
        "admin",
    )
    .await
    .unwrap();
    assert_eq!(resp.name, "bound-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_refuses_a_controller_whose_ca_does_not_match_the_pin() {
    let ctl = TestController::start().await;
    let token = ctl.token(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = client::enroll(dir.path(), &ctl.controller(), &token, &wrong, "n1")
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("pinned CA"), "{err:#}");
    // The token was not spent by the refused attempt.
    client::enroll(
        dir.path(),
        &ctl.controller(),
        &token,
        &ctl.fingerprint,
        "n1",
    )
    .await
    .unwrap();
}
