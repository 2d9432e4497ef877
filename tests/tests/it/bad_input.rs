//! Bad input gets a clear error, and nothing is stored.

use ballast_proto::pb;
use ballast_tests::TestController;

async fn revisions(ctl: &TestController) -> usize {
    ctl.admin()
        .await
        .history(pb::HistoryRequest { limit: 100 })
        .await
        .unwrap()
        .into_inner()
        .revisions
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_desired_state_is_refused_with_file_line_and_field() {
    let ctl = TestController::start().await;
    let cases = [
        (
            "roles:\n  web:\n    files: [{path: /a, content: x\n",
            "spec.yaml:",
        ),
        (
            "roles:\n  web:\n    files:\n      - path: /etc/x\n        conten: hi\n",
            "did you mean `content`",
        ),
        (
            "roles:\n  web:\n    files:\n      - {path: /etc/x, mode: 0644}\n",
            "roles.web.files[0].mode",
        ),
        (
            "roles:\n  web:\n    files:\n      - {path: ../etc/x}\n",
            "roles.web.files[0].path",
        ),
        (
            "roles:\n  a:\n    files: [{path: /etc/x, content: one}]\n  b:\n    files: [{path: /etc/x, content: two}]\ngroups:\n  all:\n    roles: [a, b]\n",
            "file[/etc/x]",
        ),
    ];
    for (yaml, expected) in cases {
        let err = ctl.apply(yaml).await.expect_err(yaml);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{yaml}");
        assert!(
            err.message().contains(expected),
            "error for {yaml:?} should mention {expected:?}: {}",
            err.message()
        );
        assert!(
            err.message().contains("spec.yaml:"),
            "names the file: {}",
            err.message()
        );
    }
    assert_eq!(revisions(&ctl).await, 0, "nothing invalid is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_and_nothing_is_stored() {
    let ctl = TestController::start().await;
    let big = format!(
        "roles:\n  web:\n    files: [{{path: /etc/big, content: \"{}\"}}]\n",
        "x".repeat(ballast_proto::MAX_MESSAGE_BYTES)
    );
    // A client with no limit of its own, so the server's bound is what refuses.
    let channel = ballast_controller::cli::admin_channel(&ctl.conn())
        .await
        .unwrap();
    let mut unbounded =
        pb::admin_client::AdminClient::new(channel).max_encoding_message_size(usize::MAX);
    let sources = vec![pb::SourceFile {
        name: "big.yaml".into(),
        content: big.clone(),
    }];
    let err = unbounded
        .apply(pb::ApplyRequest {
            sources,
            ..Default::default()
        })
        .await
        .unwrap_err();
    // Refused as a status, or by a stream reset while the body is still being
    // sent (the peer sees an h2 error); either way nothing gets through.
    let refused = |err: &tonic::Status| {
        (err.code() == tonic::Code::OutOfRange
            && err.message().contains("message length too large"))
            || (err.code() == tonic::Code::Internal && err.message().contains("h2 protocol error"))
    };
    assert!(refused(&err), "the server refused it: {err:?}");
    // The operator's own client refuses too.
    let err = ctl.apply(&big).await.unwrap_err();
    assert!(refused(&err), "the client refused it: {err:?}");
    assert_eq!(revisions(&ctl).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_labels_never_reach_storage() {
    let ctl = TestController::start().await;
    let mut admin = ctl.admin().await;
    for name in ["../etc/passwd", "a\nb", "UPPER", "-dash", &"x".repeat(64)] {
        let err = admin
            .create_token(pb::CreateTokenRequest {
                name: name.into(),
                ttl_seconds: 60,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name:?}");
        assert!(err.message().contains("allowed"), "{}", err.message());
    }
    for (k, v) in [
        ("role", "web\nx"),
        ("bad key", "v"),
        ("", "v"),
        ("k", "../.."),
    ] {
        let labels = [(k.to_string(), v.to_string())].into_iter().collect();
        let err = admin
            .create_token(pb::CreateTokenRequest {
                labels,
                ttl_seconds: 60,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{k:?}={v:?}");
    }
    // A node name chosen by an enrolling node is checked too.
    let token = ctl.token(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let err = ballast_agent::client::enroll(
        dir.path(),
        &ctl.controller(),
        &token,
        &ctl.fingerprint,
        "../../x",
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("invalid node name"), "{err:#}");
    let err = admin
        .label_node(pb::LabelNodeRequest {
            name: "nope".into(),
            labels: [("a".into(), "b".into())].into_iter().collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(ctl.nodes().await.is_empty());
}
