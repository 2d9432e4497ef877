//! Apply that cannot surprise: an apply or rollback that removes resources,
//! leaves a node with no roles, or defines a role no node group uses is
//! refused by the controller unless the operator consents (`--prune`,
//! `--yes`, `allow_prune`), stores nothing, and says what it would do per
//! node; references and template variables are checked at apply time.

use ballast_proto::pb;
use ballast_tests::{TestAgent, TestController};
use std::process::ExitCode;

/// A site with nginx, a user and a directory on every web node.
const SITE: &str = "roles:\n  web:\n    packages: [{name: nginx}]\n    users: [{name: www}]\n    directories: [{path: /srv/www}]\n    files: [{path: /etc/motd, content: hi}]\ngroups:\n  web: {match: {role: web}, roles: [web]}\n";

/// What a kubectl user writes to "add one file": one role, no node group.
const ONE_ROLE: &str = "roles:\n  nt:\n    files: [{path: /etc/nt.conf, content: x}]\n";

async fn fleet_of_three_web_nodes() -> (TestController, Vec<TestAgent>) {
    let ctl = TestController::start().await;
    let mut agents = Vec::new();
    for name in ["web-1", "web-2", "web-3"] {
        agents.push(TestAgent::enroll(&ctl, name, &[("role", "web")]).await);
    }
    ctl.apply(SITE).await.expect("first apply");
    (ctl, agents)
}

fn write_spec(dir: &tempfile::TempDir, name: &str, yaml: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

async fn revisions(ctl: &TestController) -> Vec<u64> {
    ctl.admin()
        .await
        .history(pb::HistoryRequest { limit: 100 })
        .await
        .unwrap()
        .into_inner()
        .revisions
        .iter()
        .map(|r| r.number)
        .collect()
}

/// The case: `apply -f nt.yaml` with one role and no node groups
/// used to replace the whole desired state and remove nginx, a user and a
/// directory from every node. Without consent it now stores nothing, exits
/// 1 and shows, grouped, what each node would lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_that_removes_resources_stores_nothing_without_prune() {
    let (ctl, _agents) = fleet_of_three_web_nodes().await;
    let dir = tempfile::tempdir().unwrap();
    let nt = write_spec(&dir, "nt.yaml", ONE_ROLE);

    let (code, out) = ctl.cli(&["apply", "-f", &nt]).await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    assert_eq!(
        out,
        "3 nodes (web-1, web-2, web-3): +0 ~0 -4\n  - directory[/srv/www]\n  - file[/etc/motd]\n  - package[nginx]\n  - user[www]\n\
         left with no roles: web-1, web-2, web-3\nroles no node group uses: nt\n\
         nothing stored: this apply needs consent because it removes 12 resource(s) from 3 node(s), \
         and it leaves 3 node(s) with no roles: web-1, web-2, web-3, and no node group uses role(s) nt; \
         the files are the whole desired state. Pass --prune (or --yes) to apply it\n"
    );
    assert_eq!(revisions(&ctl).await, [1], "nothing was stored");
    for n in ctl.nodes().await {
        assert_eq!(n.desired_revision, 1, "{} was not pushed", n.name);
    }

    let (code, out) = ctl.cli(&["apply", "-f", &nt, "-o", "json"]).await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["stored"], false);
    assert_eq!(
        doc["needs_prune"][0],
        "it removes 12 resource(s) from 3 node(s)"
    );
    assert!(
        doc["summary"]
            .as_str()
            .unwrap()
            .contains("  - package[nginx]\n"),
        "{doc}"
    );

    let (code, out) = ctl.cli(&["apply", "-f", &nt, "--prune"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("revision 2 created"), "{out}");
    assert!(
        out.contains("3 nodes (web-1, web-2, web-3): +0 ~0 -4\n  - directory[/srv/www]\n"),
        "{out}"
    );
    assert_eq!(revisions(&ctl).await, [2, 1]);
}

/// The check lives on the controller: a client that never sets
/// `allow_prune` (an old CLI, a script on the raw API) gets
/// FAILED_PRECONDITION with the summary in its details, and nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_refuses_a_pruning_apply_from_a_client_that_does_not_ask() {
    let (ctl, _agents) = fleet_of_three_web_nodes().await;
    let removes_nginx = SITE.replace("    packages: [{name: nginx}]\n", "");
    let status = ctl
        .admin()
        .await
        .apply(pb::ApplyRequest {
            sources: vec![pb::SourceFile {
                name: "site.yaml".into(),
                content: removes_nginx.clone(),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "nothing stored: this apply needs consent because it removes 3 resource(s) from 3 node(s); \
         the files are the whole desired state. Pass --prune (or --yes) to apply it"
    );
    let refusal: pb::PruneRefusal = prost::Message::decode(status.details()).unwrap();
    assert_eq!(refusal.reasons, ["it removes 3 resource(s) from 3 node(s)"]);
    assert_eq!(
        refusal.summary,
        "3 nodes (web-1, web-2, web-3): +0 ~0 -1\n  - package[nginx]\n"
    );
    assert_eq!(revisions(&ctl).await, [1]);

    // Adding and changing needs no consent.
    let adds = SITE.replace("content: hi", "content: hello");
    let resp = ctl
        .admin()
        .await
        .apply(pb::ApplyRequest {
            sources: vec![pb::SourceFile {
                name: "site.yaml".into(),
                content: adds,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.revision, 2);
    assert_eq!(resp.summary, "3 nodes (web-1, web-2, web-3): +0 ~1 -0\n");
}

/// A role that no node group uses reaches no node: applying it is the usual
/// sign of `apply -f` taken for a merge, so it needs consent even when
/// nothing is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_no_node_group_uses_needs_prune() {
    let (ctl, _agents) = fleet_of_three_web_nodes().await;
    let dir = tempfile::tempdir().unwrap();
    let site = write_spec(&dir, "site.yaml", SITE);
    let extra = write_spec(&dir, "extra.yaml", ONE_ROLE);
    let (code, out) = ctl.cli(&["apply", "-f", &site, "-f", &extra]).await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    assert!(
        out.contains("roles no node group uses: nt\nnothing stored: this apply needs consent because no node group uses role(s) nt;"),
        "{out}"
    );
    let (code, out) = ctl.cli(&["diff", "-f", &site, "-f", &extra]).await;
    assert_eq!(code, ExitCode::SUCCESS, "no node's resources change: {out}");
    assert!(
        out.contains("apply would need --prune: no node group uses role(s) nt"),
        "{out}"
    );
    let (code, out) = ctl
        .cli(&["apply", "-f", &site, "-f", &extra, "--yes"])
        .await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert_eq!(revisions(&ctl).await, [2, 1]);
}

/// A rollback usually removes what was added since: the same rule applies,
/// with the same summary, so going back is as visible as going forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_that_removes_resources_needs_prune() {
    let (ctl, _agents) = fleet_of_three_web_nodes().await;
    let more = SITE.replace(
        "    files: [{path: /etc/motd, content: hi}]\n",
        "    files: [{path: /etc/motd, content: hi}, {path: /etc/new.conf, content: x}]\n",
    );
    ctl.apply(&more).await.unwrap();
    let (code, out) = ctl.cli(&["rollback", "1"]).await;
    assert_eq!(code, ExitCode::FAILURE, "{out}");
    assert!(
        out.contains("3 nodes (web-1, web-2, web-3): +0 ~0 -1\n  - file[/etc/new.conf]\n"),
        "{out}"
    );
    assert_eq!(revisions(&ctl).await, [2, 1]);
    let (code, out) = ctl.cli(&["rollback", "1", "--yes"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert_eq!(revisions(&ctl).await, [3, 2, 1]);
}

/// `diff` shows per node `+N ~N -N` grouped, each id, and keeps its exit
/// codes: 2 with changes, 0 without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_groups_nodes_with_one_change_and_says_when_apply_needs_prune() {
    let (ctl, _agents) = fleet_of_three_web_nodes().await;
    let dir = tempfile::tempdir().unwrap();
    let fewer = write_spec(
        &dir,
        "site.yaml",
        &SITE
            .replace("content: hi", "content: bye")
            .replace("    users: [{name: www}]\n", ""),
    );
    let (code, out) = ctl.cli(&["diff", "-f", &fewer]).await;
    assert_eq!(code, ExitCode::from(2), "{out}");
    assert_eq!(
        out,
        "3 nodes (web-1, web-2, web-3): +0 ~1 -1\n  ~ file[/etc/motd]\n  - user[www]\n\
         apply would need --prune: it removes 3 resource(s) from 3 node(s)\n\
         \ncontent on 3 nodes (web-1, web-2, web-3):\n  ~ file[/etc/motd]\n      diff (+1 -1 lines)\n\
         \x20     --- /etc/motd\n      +++ /etc/motd\n      @@ -1,1 +1,1 @@\n      -hi\n      +bye\n"
    );
}

/// A template that cannot render with the facts a node already reported is
/// refused at apply, naming the template's file and line, the node and the
/// missing fact; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_a_template_that_cannot_render_with_a_nodes_known_facts() {
    let (ctl, agents) = fleet_of_three_web_nodes().await;
    let mut client = agents[0].agent_client().await.unwrap();
    client
        .put_facts(pb::Facts {
            json: serde_json::json!({"os": {"id": "debian"}}).to_string(),
        })
        .await
        .unwrap();
    let templated = SITE.replace(
        "content: hi}",
        "content: \"{{ facts.os.codename }}\", template: true}",
    );
    let status = ctl.apply(&templated).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "a template cannot render on nodes whose facts are known; nothing stored:\n\
         file[/etc/motd] (spec.yaml:6): render template: undefined value facts.os.codename \
         (template line 1): the node has no such fact or var; guard it with `is defined` or `default` \
         (on node web-1, with the facts it reported)"
    );
    assert_eq!(revisions(&ctl).await, [1]);
    // Guarded, it renders: stored.
    let guarded = SITE.replace(
        "content: hi}",
        "content: \"{{ facts.os.codename | default('?') }}\", template: true}",
    );
    assert_eq!(ctl.apply(&guarded).await.unwrap().revision, 2);
}
