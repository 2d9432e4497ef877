//! Closed wire enums at the node boundary: a report whose trigger or outcome
//! is unspecified or unknown is refused as a whole, naming the field, and
//! nothing of it is stored or read as a default.

use ballast_proto::pb;
use ballast_tests::{TestAgent, TestController};
use tokio_stream::StreamExt;

fn report(desired: &pb::DesiredState, trigger: i32, outcomes: &[i32]) -> pb::RunReport {
    pb::RunReport {
        revision: desired.revision,
        state_hash: desired.hash.clone(),
        trigger,
        resources: outcomes
            .iter()
            .enumerate()
            .map(|(i, &outcome)| pb::ResourceOutcome {
                id: format!("file[/srv/{i}]"),
                outcome,
                error: "boom".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_with_unknown_or_unspecified_enums_are_refused_over_mtls() {
    let ctl = TestController::start().await;
    let agent = TestAgent::enroll(&ctl, "odd-1", &[]).await;
    let mut client = agent.agent_client().await.unwrap();
    let desired = client
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let d = &desired;
    let failed = pb::Outcome::Failed as i32;
    let resync = pb::Trigger::Resync as i32;
    client.report(report(d, resync, &[failed])).await.unwrap();
    let before = ctl.node("odd-1").await.unwrap();
    assert_eq!(before.status(), pb::NodeStatus::Failed, "{before:?}");

    for (bad, field) in [
        (
            report(d, resync, &[failed, 9]),
            "resources[1].outcome: unknown value 9",
        ),
        (
            report(d, resync, &[0]),
            "resources[0].outcome: unspecified (0)",
        ),
        (report(d, 0, &[failed]), "trigger: unspecified (0)"),
        (report(d, 77, &[]), "trigger: unknown value 77"),
    ] {
        let err = client.report(bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(field) && err.message().contains("expected one of"),
            "{field}: {}",
            err.message()
        );
    }

    // Nothing of the refused reports was stored: an unknown outcome did not
    // turn the failing node into a converged one.
    let detail = ctl.node_detail("odd-1").await;
    let last = detail.last_report.unwrap();
    assert_eq!(last.resources.len(), 1);
    assert_eq!(last.resources[0].outcome, failed);
    assert_eq!(last.trigger, resync);
    let after = detail.summary.unwrap();
    assert_eq!(after.status(), pb::NodeStatus::Failed, "{after:?}");
}
