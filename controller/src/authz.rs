//! Who may call what. One table maps every gRPC method to a rule, and one
//! tower layer enforces it before any handler runs.
//!
//! Invariant: deny by default. A method missing from [`rule_for`] is refused,
//! and a test fails for every method of the contract without a rule.
//! Identity comes only from the verified client certificate.

use crate::ca::{Identity, identity_from_cert};
use crate::fleet::Fleet;
use crate::metrics::ScrapeToken;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No client certificate needed; the request carries its own credential (a token).
    Public,
    /// A node certificate of an enrolled, unrevoked node; the node acts on itself only.
    Node,
    /// The admin certificate.
    Admin,
    /// The admin certificate, or the scrape token when one is configured
    /// (`Authorization: Bearer TOKEN`): `/metrics` only.
    Scrape,
}

/// The rule for a method path such as `/ballast.v1.Admin/Apply`; `None` means denied.
pub fn rule_for(path: &str) -> Option<Rule> {
    let rule = match path {
        "/ballast.v1.Enrollment/Enroll" => Rule::Public,
        // Bootstrap downloads over HTTPS: the CA certificate, the installer and the
        // agent binary are not secret.
        crate::bootstrap::CA_PATH
        | crate::bootstrap::INSTALL_PATH
        | crate::bootstrap::AGENT_PATH
        | crate::bootstrap::AGENT_SHA_PATH => Rule::Public,
        crate::metrics::PATH => Rule::Scrape,
        "/ballast.v1.Agent/Watch"
        | "/ballast.v1.Agent/Report"
        | "/ballast.v1.Agent/PutFacts"
        | "/ballast.v1.Agent/PutHostFigures"
        | "/ballast.v1.Agent/Heartbeat"
        // Plans: the node is the certificate's; a result names only a plan
        // sent to that node (checked by `fleet::plan::Hub`).
        | "/ballast.v1.Agent/Plans"
        | "/ballast.v1.Agent/PlanResult" => Rule::Node,
        "/ballast.v1.Admin/Apply"
        | "/ballast.v1.Admin/Diff"
        | "/ballast.v1.Admin/History"
        | "/ballast.v1.Admin/Rollback"
        | "/ballast.v1.Admin/CreateToken"
        | "/ballast.v1.Admin/ListNodes"
        | "/ballast.v1.Admin/GetNode"
        | "/ballast.v1.Admin/RevokeNode"
        | "/ballast.v1.Admin/LabelNode"
        | "/ballast.v1.Admin/CreateDashboardLogin"
        | "/ballast.v1.Admin/GetRollout"
        | "/ballast.v1.Admin/ControlRollout"
        | "/ballast.v1.Admin/Plan" => Rule::Admin,
        _ => return None,
    };
    Some(rule)
}

/// Checks a request against the table; on success the caller's [`Identity`]
/// (absent for public methods) is what handlers read from the extensions.
///
/// `scrape_token` says whether the request carried the configured scrape
/// token; it opens `Rule::Scrape` paths and nothing else.
pub fn authorize(
    fleet: &Fleet,
    path: &str,
    peer_leaf: Option<&[u8]>,
    scrape_token: bool,
) -> Result<Option<Identity>, tonic::Status> {
    let Some(rule) = rule_for(path) else {
        return Err(tonic::Status::permission_denied(format!(
            "method {path} is not allowed"
        )));
    };
    if rule == Rule::Public || (rule == Rule::Scrape && scrape_token) {
        return Ok(None);
    }
    let Some(der) = peer_leaf else {
        return Err(tonic::Status::unauthenticated(
            "a client certificate is required",
        ));
    };
    let identity = identity_from_cert(der)
        .map_err(|e| tonic::Status::unauthenticated(format!("client certificate: {e:#}")))?;
    match (&identity, rule) {
        (Identity::Admin { .. }, Rule::Admin | Rule::Scrape) => Ok(Some(identity)),
        (Identity::Node { name, serial }, Rule::Node) => {
            fleet
                .check_node(name, serial)
                .map_err(tonic::Status::permission_denied)?;
            Ok(Some(identity))
        }
        (Identity::Node { .. }, Rule::Admin | Rule::Scrape) => Err(
            tonic::Status::permission_denied("node certificates cannot call admin methods"),
        ),
        (Identity::Admin { .. }, Rule::Node) => Err(tonic::Status::permission_denied(
            "the admin certificate cannot call node methods",
        )),
        (_, Rule::Public) => unreachable!("public methods return above"),
    }
}

/// The tower layer that runs [`authorize`] for every request.
#[derive(Clone)]
pub struct AuthzLayer {
    fleet: Arc<Fleet>,
    scrape_token: Option<Arc<ScrapeToken>>,
}

impl AuthzLayer {
    pub fn new(fleet: Arc<Fleet>, scrape_token: Option<Arc<ScrapeToken>>) -> AuthzLayer {
        AuthzLayer {
            fleet,
            scrape_token,
        }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            fleet: self.fleet.clone(),
            scrape_token: self.scrape_token.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    fleet: Arc<Fleet>,
    scrape_token: Option<Arc<ScrapeToken>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        let scrape_token = self.scrape_token.as_ref().is_some_and(|t| {
            req.headers()
                .get(http::header::AUTHORIZATION)
                .is_some_and(|v| t.matches(v.as_bytes()))
        });
        match authorize(&self.fleet, req.uri().path(), leaf, scrape_token) {
            Ok(identity) => {
                if let Some(identity) = identity {
                    req.extensions_mut().insert(identity);
                }
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::warn!(path = req.uri().path(), code = ?status.code(), reason = status.message(), "request refused");
                let grpc = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                if grpc {
                    return Box::pin(async move { Ok(status.into_http()) });
                }
                // A plain HTTP client (a scraper, the bootstrap fetcher) reads
                // the HTTP status and a text body, not grpc-status.
                let code = match status.code() {
                    tonic::Code::Unauthenticated => http::StatusCode::UNAUTHORIZED,
                    _ => http::StatusCode::FORBIDDEN,
                };
                let text = format!("{}\n", status.message());
                let mut resp =
                    http::Response::new(tonic::body::Body::new(axum::body::Body::from(text)));
                *resp.status_mut() = code;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                Box::pin(async move { Ok(resp) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_contract_has_a_rule() {
        let paths = ballast_proto::all_method_paths();
        assert_eq!(
            paths.len(),
            21,
            "descriptor lists the contract's methods: {paths:?}"
        );
        let missing: Vec<&String> = paths.iter().filter(|p| rule_for(p).is_none()).collect();
        assert!(
            missing.is_empty(),
            "methods without an authorization rule: {missing:?}"
        );
    }

    #[test]
    fn unknown_methods_are_denied() {
        assert_eq!(rule_for("/ballast.v1.Admin/DropEverything"), None);
        assert_eq!(
            rule_for("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
    }

    #[test]
    fn plan_methods_need_the_right_certificate() {
        assert_eq!(rule_for("/ballast.v1.Agent/Plans"), Some(Rule::Node));
        assert_eq!(rule_for("/ballast.v1.Agent/PlanResult"), Some(Rule::Node));
        assert_eq!(rule_for("/ballast.v1.Admin/Plan"), Some(Rule::Admin));
    }

    #[test]
    fn only_enrollment_is_public() {
        let public: Vec<String> = ballast_proto::all_method_paths()
            .into_iter()
            .filter(|p| rule_for(p) == Some(Rule::Public))
            .collect();
        assert_eq!(
            public,
            vec!["/ballast.v1.Enrollment/Enroll".to_string()],
            "of the gRPC methods, only Enroll is public"
        );
    }
}
