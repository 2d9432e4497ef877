//! Apply-side rendering benchmark (not a timed test): N nodes stored in a
//! redb store in a temp dir, their labels drawn from a few distinct label
//! sets, a spec of many node groups and roles with templates. Measures what
//! the controller does with no agent connected: `Fleet::open` (renders every
//! node) and `Fleet::apply` (validate, store durably, render every node,
//! push), so the figure is the apply RPC's own cost, without the network;
//! and the dashboard's fleet page over all of them, without and with a
//! rollout in flight.
//!
//!     cargo bench -p ballast-tests --bench render_fleet -- 10000 50000
//!
//! Under `cargo test` it is a small smoke run.

use ballast_controller::fleet::{Clock, Fleet, Liveness};
use ballast_controller::store::{Op, RedbStore, Store};
use ballast_proto::spec::{NodeMeta, Renderer};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Distinct label sets among the nodes.
const LABEL_SETS: usize = 20;

/// A spec of `LABEL_SETS` node groups (one per label set, each with its
/// vars and two roles) plus one group every node is in.
fn spec(version: u32) -> String {
    let mut s = String::from("roles:\n  base:\n");
    s.push_str("    directories: [{path: /srv/bench}]\n");
    s.push_str(&format!(
        "    files: [{{path: /srv/bench/motd, content: \"version {version}\\n\"}}]\n"
    ));
    s.push_str("    packages: [{name: curl}, {name: rsync}, {name: htop}]\n");
    s.push_str("    services: [{name: cron, ensure: running}]\n");
    for i in 0..LABEL_SETS {
        s.push_str(&format!(
            "  app{i}:\n    packages: [{{name: app{i}}}]\n    users: [{{name: app{i}}}]\n    files:\n      - {{path: /etc/app{i}/app.conf, content: \"port={{{{ vars.port }}}} v={version}\\n\", template: true}}\n      - {{path: /etc/app{i}/static, content: \"static {i}\\n\"}}\n    services: [{{name: app{i}, ensure: running}}]\n"
        ));
        s.push_str(&format!(
            "  tune{i}:\n    sysctl: [{{key: net.core.somaxconn, value: \"{}\"}}]\n",
            1024 + i
        ));
    }
    s.push_str("groups:\n  all:\n    roles: [base]\n");
    for i in 0..LABEL_SETS {
        s.push_str(&format!(
            "  set{i}:\n    match: {{set: s{i}}}\n    roles: [app{i}, tune{i}]\n    vars: {{port: {}}}\n",
            8000 + i
        ));
    }
    s
}

fn sources(version: u32) -> Vec<(String, String)> {
    vec![("bench.yaml".into(), spec(version))]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
    // Nodes as enrollment stores them; written directly, in batches.
    let names: Vec<String> = (0..n).map(|i| format!("sim-{i:05}")).collect();
    for chunk in names.chunks(1000) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|name| {
                let i: usize = name[4..].parse().unwrap();
                let record = serde_json::json!({
                    "name": name,
                    "labels": {"set": format!("s{}", i % LABEL_SETS), "env": "prod"},
                    "cert_serial": format!("{i:040x}"),
                    "enrolled_at_ms": 1,
                    "revoked": false,
                    "timeline": [],
                });
                Op::Put(
                    format!("nodes/{name}"),
                    serde_json::to_vec(&record).unwrap(),
                )
            })
            .collect();
        assert!(store.txn(&[], &ops).unwrap());
    }
    let fleet = Fleet::open(
        store.clone(),
        Duration::from_secs(60),
        Liveness::default(),
        Clock::manual(),
    )
    .unwrap();
    fleet.apply(sources(1), "bench", "first", 0, true).unwrap();
    drop(fleet);
    // Load: renders every node's state of revision 1.
    let t = Instant::now();
    let fleet = Fleet::open(
        store,
        Duration::from_secs(60),
        Liveness::default(),
        Clock::manual(),
    )
    .unwrap();
    let open = t.elapsed();
    let mut applies = Vec::new();
    for round in 0..5u32 {
        let t = Instant::now();
        let resp = fleet
            .apply(sources(round + 2), "bench", "round", 0, true)
            .unwrap();
        applies.push(t.elapsed());
        assert_eq!(resp.affected_nodes.len(), n, "every node changes");
    }
    applies.sort();
    // The dashboard's fleet page over these nodes (one pass for the counts
    // and the nodes that need attention, the template), as a request does.
    let mut pages = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let html = ballast_controller::dashboard::fleet_html(&fleet);
        pages.push(t.elapsed());
        assert!(html.contains(&format!("<strong id=\"total\">{n}</strong>")));
    }
    pages.sort();
    // The same page while a rollout is in flight: its waves counted from
    // every node's state (10% first, then the rest), as the page shows it.
    let mut rolled = sources(8);
    rolled[0]
        .1
        .push_str("rollout:\n  waves: [{percent: 10}]\n  bake: 1m\n");
    // The apply that starts it also places every node in a wave.
    let t = Instant::now();
    fleet.apply(rolled, "bench", "rollout", 0, true).unwrap();
    let rollout_apply = t.elapsed();
    let mut rollout_pages = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let html = ballast_controller::dashboard::fleet_html(&fleet);
        rollout_pages.push(t.elapsed());
        assert!(html.contains("wave 1 of 2"), "the rollout is on the page");
    }
    rollout_pages.sort();
    // Rendering alone, both ways, for the same nodes: each node's state on
    // its own (what apply did before) and through the `Renderer` (now).
    let spec = ballast_proto::spec::parse(&[ballast_proto::spec::Source {
        name: "bench.yaml".into(),
        text: spec(9),
    }])
    .unwrap();
    let metas: Vec<NodeMeta> = (0..n)
        .map(|i| NodeMeta {
            name: format!("sim-{i:05}"),
            labels: [
                ("set".to_owned(), format!("s{}", i % LABEL_SETS)),
                ("env".to_owned(), "prod".to_owned()),
            ]
            .into(),
        })
        .collect();
    let t = Instant::now();
    let mut bytes = 0;
    for m in &metas {
        let doc = spec.render(m).to_document();
        bytes += doc.len();
        std::hint::black_box(ballast_proto::sha256_tag(&doc));
    }
    let alone = t.elapsed();
    let t = Instant::now();
    let mut renderer = Renderer::new(&spec);
    for m in &metas {
        let doc = renderer.document(&m.name, &m.labels);
        std::hint::black_box(ballast_proto::sha256_tag(&doc));
    }
    let shared = t.elapsed();
    println!(
        "render_fleet: {n} nodes, {LABEL_SETS} distinct label sets, {} node groups",
        LABEL_SETS + 1
    );
    println!("  Fleet::open (load, render {n} nodes):   {}", ms(open));
    println!(
        "  apply (validate, store, render {n} nodes, push), 5 applies: median {}, max {}",
        ms(applies[2]),
        ms(applies[4])
    );
    println!(
        "  apply starting a rollout of 2 waves (10%, then the rest) over {n} nodes: {}",
        ms(rollout_apply)
    );
    println!(
        "  dashboard fleet page over {n} nodes, 5 renders: median {}, max {}",
        ms(pages[2]),
        ms(pages[4])
    );
    println!(
        "  dashboard fleet page with a rollout of 2 waves in flight, 5 renders: median {}, max {}",
        ms(rollout_pages[2]),
        ms(rollout_pages[4])
    );
    println!(
        "  render + hash {n} documents ({} bytes each): each node alone {}, once per selection {}",
        bytes / n,
        ms(alone),
        ms(shared)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test` does not, and then this is a
    // small smoke run. Numbers are node counts.
    let counts: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let counts = match (counts.is_empty(), args.iter().any(|a| a == "--bench")) {
        (false, _) => counts,
        (true, true) => vec![10_000, 50_000],
        (true, false) => vec![200],
    };
    for n in counts {
        run(n);
    }
}
