//! The dashboard's pages: one request handler that checks the session and
//! routes by path, and minijinja templates (`templates/*.html`, compiled in)
//! with HTML autoescaping on, so whatever a node sent is text on the page.

use super::{Access, COOKIE, SESSION_TTL};
use crate::fleet::Fleet;
use crate::metrics::ScrapeToken;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use ballast_proto::enums::NodeStatus;
use ballast_proto::pb;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use std::sync::Arc;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("fleet.html", include_str!("templates/fleet.html")),
    ("nodes.html", include_str!("templates/nodes.html")),
    ("node.html", include_str!("templates/node.html")),
    ("revisions.html", include_str!("templates/revisions.html")),
    ("rollout.html", include_str!("templates/rollout.html")),
    (
        "rollout_progress.html",
        include_str!("templates/rollout_progress.html"),
    ),
    ("missing.html", include_str!("templates/missing.html")),
];

/// Nodes per page of `/nodes`.
const PAGE: u32 = 100;
/// Failing nodes listed on the fleet page.
const PROBLEMS: usize = 50;
/// Revisions listed (and offered for a diff) on the revisions page.
const HISTORY: usize = 100;

/// The templates, with HTML autoescaping (by their `.html` names) and the
/// one filter they need beyond minijinja's builtins.
fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.add_filter("urlencode", |v: String| urlencode(&v));
    for (name, text) in TEMPLATES {
        env.add_template(name, text)
            .expect("the dashboard's templates parse");
    }
    env
}

/// Percent-encodes all but unreserved characters, for a path segment or a
/// query value.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub struct Pages {
    env: minijinja::Environment<'static>,
    fleet: Arc<Fleet>,
    access: Arc<Access>,
    scrape_token: Option<Arc<ScrapeToken>>,
}

pub(super) fn time(ms: u64) -> String {
    crate::cli::output::time(ms)
}

/// `application/x-www-form-urlencoded` decoding of one query value; a `%`
/// not followed by two hex digits stays as it is.
fn decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && hex(bytes[i + 1]).is_some()
                && hex(bytes[i + 2]).is_some() =>
            {
                out.push(hex(bytes[i + 1]).unwrap_or(0) * 16 + hex(bytes[i + 2]).unwrap_or(0));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn summary_json(n: &pb::NodeSummary) -> Value {
    let status = NodeStatus::try_from(n.status)
        .map(|s| s.as_str())
        .unwrap_or("unknown");
    let labels: std::collections::BTreeMap<&String, &String> = n.labels.iter().collect();
    json!({
        "name": n.name,
        "status": status,
        "labels": labels,
        "desired_revision": n.desired_revision,
        "applied_revision": n.applied_revision,
        "last_seen": if n.last_seen_ms == 0 { "never".to_owned() } else { time(n.last_seen_ms) },
        "failed_resources": n.failed_resources,
        "failed_count": n.failed_count,
    })
}

/// Nothing from elsewhere; scripts only from this origin's files (the
/// binary's own `static/`), never inline or evaluated; fetches only to this
/// origin; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn respond(status: StatusCode, body: String) -> Response {
    respond_as(status, "text/html; charset=utf-8", body)
}

fn respond_as(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The login code in a URL is never sent on as a referrer; nothing is cached.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl Pages {
    pub fn new(
        fleet: Arc<Fleet>,
        access: Arc<Access>,
        scrape_token: Option<Arc<ScrapeToken>>,
    ) -> Pages {
        Pages {
            env: environment(),
            fleet,
            access,
            scrape_token,
        }
    }

    fn render(&self, status: StatusCode, name: &str, ctx: Value) -> Response {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => respond(status, html),
            Err(e) => {
                tracing::error!(template = name, error = %e, "dashboard page failed");
                respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the controller's log".into(),
                )
            }
        }
    }

    fn login_page(&self, status: StatusCode, why: &str) -> Response {
        self.render(status, "login.html", json!({ "why": why }))
    }

    pub async fn handle(self: Arc<Self>, req: Request) -> Response {
        let path = req.uri().path().to_owned();
        if path == "/login" {
            let code = query(&req)
                .into_iter()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v)
                .unwrap_or_default();
            return match self.access.spend(&code) {
                Some(session) => {
                    let mut resp = respond(StatusCode::SEE_OTHER, String::new());
                    resp.headers_mut()
                        .insert(header::LOCATION, HeaderValue::from_static("/"));
                    let cookie = format!(
                        "{COOKIE}={session}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
                        SESSION_TTL.as_secs()
                    );
                    resp.headers_mut().insert(
                        header::SET_COOKIE,
                        HeaderValue::from_str(&cookie).expect("hex session id"),
                    );
                    resp
                }
                None => self.login_page(
                    StatusCode::UNAUTHORIZED,
                    "This login link is unknown, used already or expired. Run `ballast dashboard url` for a new one.",
                ),
            };
        }
        if path == crate::metrics::PATH
            && let Some(token) = &self.scrape_token
            && req
                .headers()
                .get(header::AUTHORIZATION)
                .is_some_and(|v| token.matches(v.as_bytes()))
        {
            let fleet = self.fleet.clone();
            let text = tokio::task::spawn_blocking(move || crate::metrics::scrape(&fleet))
                .await
                .unwrap_or_default();
            let mut resp = Response::new(Body::from(text));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            return resp;
        }
        let cookie = req
            .headers()
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok());
        if !self.access.session_valid(cookie) {
            return self.login_page(
                StatusCode::UNAUTHORIZED,
                "Run `ballast dashboard url` and open the link it prints.",
            );
        }
        let q = query(&req);
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.page(&path, &q))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "dashboard page panicked");
                respond(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            })
    }

    fn page(&self, path: &str, q: &[(String, String)]) -> Response {
        match path {
            "/" => self.fleet_page(),
            "/nodes" => self.nodes_page(q),
            "/revisions" => self.revisions_page(q),
            "/rollout" => self.render(
                StatusCode::OK,
                "rollout.html",
                super::rollout::context(&self.fleet),
            ),
            "/rollout/progress" => self.render(
                StatusCode::OK,
                "rollout_progress.html",
                super::rollout::context(&self.fleet),
            ),
            "/static/rollout.js" => respond_as(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                super::rollout::SCRIPT.to_owned(),
            ),
            p if p.starts_with("/nodes/") => self.node_page(&decode(&p["/nodes/".len()..])),
            _ => self.render(
                StatusCode::NOT_FOUND,
                "missing.html",
                json!({ "what": path }),
            ),
        }
    }

    fn fleet_page(&self) -> Response {
        self.render(StatusCode::OK, "fleet.html", fleet_context(&self.fleet))
    }

    fn nodes_page(&self, q: &[(String, String)]) -> Response {
        let filter = q
            .iter()
            .find(|(k, _)| k == "where")
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let page = q
            .iter()
            .find(|(k, _)| k == "page")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let filters: Vec<String> = filter.split_whitespace().map(str::to_owned).collect();
        match self.fleet.list_nodes(&filters, PAGE, &page) {
            Ok(list) => self.render(
                StatusCode::OK,
                "nodes.html",
                json!({
                    "filter": filter,
                    "nodes": list.nodes.iter().map(summary_json).collect::<Vec<_>>(),
                    "next": list.next_page_token,
                    "revision": list.current_revision,
                }),
            ),
            Err(e) => self.render(
                StatusCode::BAD_REQUEST,
                "nodes.html",
                json!({ "filter": filter, "error": e.to_string(), "nodes": [] }),
            ),
        }
    }

    fn node_page(&self, name: &str) -> Response {
        let detail = match self.fleet.get_node(name) {
            Ok(d) => d,
            Err(_) => {
                return self.render(
                    StatusCode::NOT_FOUND,
                    "missing.html",
                    json!({ "what": format!("node {name}") }),
                );
            }
        };
        let summary = detail
            .summary
            .as_ref()
            .map(summary_json)
            .unwrap_or(Value::Null);
        let facts = serde_json::from_str::<Value>(&detail.facts_json)
            .ok()
            .and_then(|f| serde_json::to_string_pretty(&f).ok())
            .unwrap_or_default();
        let run = detail.last_report.as_ref().map(|r| {
            json!({
                "revision": r.revision,
                "started": time(r.started_at_ms),
                "duration_ms": r.duration_ms,
                "noop": r.noop,
                "resources": r.resources.iter().map(|o| json!({
                    "id": o.id,
                    "outcome": ballast_proto::enums::Outcome::try_from(o.outcome)
                        .map(|o| o.as_str()).unwrap_or("unknown"),
                    "changes": o.changes,
                    "error": o.error,
                    "diff": diff_lines(&o.diff),
                })).collect::<Vec<_>>(),
            })
        });
        let timeline: Vec<Value> = detail
            .timeline
            .iter()
            .map(|e| json!({ "at": time(e.at_ms), "stage": e.stage, "detail": e.detail }))
            .collect();
        let host: Option<Vec<Value>> = detail.host.as_ref().map(|h| {
            crate::cli::host::rows(h)
                .into_iter()
                .map(|(label, value)| json!({ "label": label, "value": value }))
                .collect()
        });
        let chart = match self.fleet.recent_runs(name) {
            Ok(runs) => super::chart::runs(&runs),
            Err(e) => {
                tracing::warn!(node = name, error = %e, "dashboard: run history unreadable");
                Value::Null
            }
        };
        self.render(
            StatusCode::OK,
            "node.html",
            json!({
                "node": summary,
                "host": host,
                "facts": facts,
                "run": run,
                "chart": chart,
                "timeline": timeline,
            }),
        )
    }

    /// The history, and with `from` and `to` the diff of their sources.
    fn revisions_page(&self, q: &[(String, String)]) -> Response {
        let revisions: Vec<Value> = self
            .fleet
            .history(HISTORY)
            .unwrap_or_default()
            .iter()
            .map(revision_json)
            .collect();
        let arg = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim());
        let mut ctx = json!({
            "revisions": revisions,
            "diff": Value::Null,
            "max_lines": super::diff::MAX_LINES,
        });
        let (from, to) = match (arg("from"), arg("to")) {
            (None, None) => return self.render(StatusCode::OK, "revisions.html", ctx),
            (from, to) => (from.unwrap_or(""), to.unwrap_or("")),
        };
        match self.revision_diff(from, to) {
            Ok((from, to, files)) => {
                ctx["from"] = from.into();
                ctx["to"] = to.into();
                ctx["diff"] = json!(files);
                self.render(StatusCode::OK, "revisions.html", ctx)
            }
            Err(e) => {
                ctx["error"] = e.into();
                self.render(StatusCode::BAD_REQUEST, "revisions.html", ctx)
            }
        }
    }

    /// The diff of two stored revisions' sources, or what is wrong with
    /// the request.
    fn revision_diff(
        &self,
        from: &str,
        to: &str,
    ) -> Result<(u64, u64, Vec<super::diff::FileDiff>), String> {
        let number = |what: &str, v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{what}: give a revision number (1 or more), not {v:?}"))
        };
        let (a, b) = (number("from", from)?, number("to", to)?);
        let sources = |n: u64| match self.fleet.revision_sources(n) {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(format!("revision {n} does not exist")),
            Err(e) => Err(format!("revision {n}: {e}")),
        };
        Ok((a, b, super::diff::sources(&sources(a)?, &sources(b)?)))
    }
}

/// What the fleet page shows: one pass over the fleet (`Fleet::overview`),
/// the current rollout and the last ten revisions.
pub(super) fn fleet_context(fleet: &Fleet) -> Value {
    let (counts, problems, revision) = fleet.overview(PROBLEMS);
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let counts: Vec<Value> = NodeStatus::ALL
        .iter()
        .map(|s| {
            let n = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
            json!({ "status": s.as_str(), "count": n, "attention": s.needs_attention() })
        })
        .collect();
    let history = fleet.history(10).unwrap_or_default();
    let numbers: Vec<u64> = history.iter().map(|r| r.number).collect();
    let revisions: Vec<Value> = history
        .iter()
        .zip(fleet.rollout_outcomes(&numbers))
        .map(|(r, outcome)| {
            let mut v = revision_json(r);
            v["rollout"] = json!(outcome);
            v
        })
        .collect();
    json!({
        "revision": revision,
        "total": total,
        "counts": counts,
        "problems": problems.iter().map(summary_json).collect::<Vec<_>>(),
        "problems_shown": PROBLEMS,
        "revisions": revisions,
        "rollout": super::rollout::summary(fleet),
    })
}

/// The fleet page's HTML, rendered as a request would (for the benchmark).
pub fn fleet_html(fleet: &Fleet) -> String {
    environment()
        .get_template("fleet.html")
        .and_then(|t| t.render(fleet_context(fleet)))
        .expect("the fleet page renders")
}

/// A content diff's lines, each with the CSS class of its kind (`add`,
/// `del`, `hunk`, `head`, or none for context and notes); the text is
/// escaped by the template like everything a node sends.
fn diff_lines(diff: &str) -> Vec<Value> {
    diff.lines()
        .map(|l| {
            let class = match l.as_bytes().first() {
                _ if l.starts_with("+++ ") || l.starts_with("--- ") => "head",
                _ if l.starts_with("diff ") => "head",
                Some(b'+') => "add",
                Some(b'-') => "del",
                Some(b'@') if l.starts_with("@@ ") => "hunk",
                _ => "",
            };
            json!({ "class": class, "text": l })
        })
        .collect()
}

fn revision_json(r: &pb::Revision) -> Value {
    json!({
        "number": r.number,
        "author": r.author,
        "created": time(r.created_at_ms),
        "message": r.message,
        "hash": r.hash.chars().take(19).collect::<String>(),
        "restored_from": r.restored_from,
    })
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn query_values_are_form_decoded() {
        assert_eq!(decode("os.id%3Ddebian+role=web"), "os.id=debian role=web");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}

#[cfg(test)]
mod template_tests {
    use serde_json::json;

    /// A diff's lines carry the class of their kind, and each reaches the
    /// page as escaped text in its own span.
    #[test]
    fn node_page_diff_lines_are_classed_and_escaped() {
        let lines = super::diff_lines(
            "diff (+1 -1 lines)\n--- /a\n+++ /a\n@@ -1,1 +1,1 @@\n same\n-<b>old</b>\n+new\n",
        );
        let classes: Vec<&str> = lines.iter().map(|l| l["class"].as_str().unwrap()).collect();
        assert_eq!(classes, ["head", "head", "head", "hunk", "", "del", "add"]);
        let html = super::environment()
            .get_template("node.html")
            .unwrap()
            .render(json!({"node": {"name": "n", "labels": {}}, "facts": "", "timeline": [],
                "run": {"revision": 1, "started": "t", "duration_ms": 3, "noop": false,
                    "resources": [{"id": "file[/a]", "outcome": "changed", "changes": ["replace content (4 -> 4 bytes)"],
                        "error": "", "diff": lines}]}}))
            .unwrap();
        assert!(
            html.contains(r#"<span class="del">-&lt;b&gt;old&lt;&#x2f;b&gt;</span>"#),
            "{html}"
        );
        assert!(html.contains(r#"<span class="add">+new</span>"#), "{html}");
    }

    #[test]
    fn every_template_renders_and_escapes() {
        let env = super::environment();
        let evil = "<b>x</b>";
        let node = json!({"name": evil, "status": "failed", "labels": {"k": evil},
            "desired_revision": 1, "applied_revision": 1, "last_seen": "never",
            "failed_resources": [evil], "failed_count": 2});
        let rollout = json!({"revision": 2, "base": 1, "phase": "paused", "final": false,
            "reason": evil, "wave": 1, "wave_count": 2, "bake": "1m", "max_failed": 0,
            "baking": null, "moved": 1, "nodes": 2, "waves": [
                {"number": 1, "state": "current", "total": 1, "started": true, "converged": 0,
                 "failed_count": 1, "failed": [evil], "failed_more": 0, "pending": 0,
                 "percent": 0, "names": [evil], "names_more": 0},
                {"number": 2, "state": "waiting", "total": 1, "started": false, "converged": 1,
                 "failed_count": 0, "failed": [], "failed_more": 0, "pending": 0,
                 "percent": 100, "names": [evil], "names_more": 0}],
            "policy": evil,
            "tracks": [{"policy": evil, "prefix": "", "waves": []}, {"policy": evil, "prefix": "policy-2-", "wave": 1, "wave_count": 1, "bake": "1m", "max_failed": 0,
                "baking": {"done": "1s", "left": "59s", "percent": 1}, "done": false, "waves": [
                {"number": 1, "state": "current", "total": 1, "started": true, "converged": 0,
                 "failed_count": 1, "failed": [evil], "failed_more": 0, "pending": 0,
                 "percent": 0, "names": [evil], "names_more": 0}]}],
            "at_once": {"number": 1, "state": "at-once", "total": 1, "started": true, "converged": 1,
                 "failed_count": 0, "failed": [], "failed_more": 0, "pending": 0,
                 "percent": 100, "names": [evil], "names_more": 0}});
        let cases = [
            ("login.html", json!({"why": evil})),
            ("missing.html", json!({"what": evil})),
            (
                "fleet.html",
                json!({"revision": 1, "total": 1, "problems_shown": 50,
                "counts": [{"status": "failed", "count": 1, "attention": true}],
                "problems": [node.clone()], "rollout": rollout.clone(),
                "revisions": [{"number": 2, "created": "t", "author": evil, "message": evil, "restored_from": 0, "rollout": "aborted"}]}),
            ),
            (
                "nodes.html",
                json!({"filter": evil, "nodes": [node.clone()], "next": "a&b", "revision": 1}),
            ),
            (
                "node.html",
                json!({"node": node, "facts": evil, "host": [{"label": "disk", "value": evil}], "timeline": [{"at": "t", "stage": "s", "detail": evil}],
                "chart": super::super::chart::runs(&[crate::fleet::RunPoint { started_at_ms: 1, duration_ms: 5, failed: 1 }]),
                "run": {"revision": 1, "started": "t", "duration_ms": 3, "noop": false,
                    "resources": [{"id": evil, "outcome": "failed", "changes": [evil], "error": evil,
                        "diff": super::diff_lines(&format!("diff (+1 -1 lines)\n-{evil}\n+{evil}\n"))}]}}),
            ),
            (
                "revisions.html",
                json!({"revisions": [{"number": 2, "created": "t", "author": evil, "message": evil, "hash": "h", "restored_from": 0}],
                "from": 1, "to": 2, "error": evil, "max_lines": 5,
                "diff": super::super::diff::sources(&[("a.yaml".into(), evil.into())], &[("a.yaml".into(), format!("{evil}\n{evil}"))])}),
            ),
            (
                "rollout.html",
                json!({"rollout": rollout.clone(), "current_revision": 2, "updated": evil}),
            ),
            (
                "rollout_progress.html",
                json!({"rollout": rollout, "current_revision": 2, "updated": "t"}),
            ),
            (
                "rollout_progress.html",
                json!({"rollout": null, "current_revision": 2, "updated": evil}),
            ),
        ];
        for (name, ctx) in cases {
            let html = env
                .get_template(name)
                .unwrap()
                .render(ctx)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(!html.contains(evil), "{name} let markup through:\n{html}");
            assert!(
                html.contains("&lt;b&gt;"),
                "{name} shows no escaped node text:\n{html}"
            );
            // The policy allows no inline script: every script is a file.
            for (i, _) in html.match_indices("<script") {
                assert!(
                    html[i..].starts_with("<script src=\"/static/"),
                    "{name} has an inline script:\n{html}"
                );
            }
        }
    }
}
