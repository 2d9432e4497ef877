//! The gRPC services. The only place that turns fleet errors into `tonic::Status`
//! (besides the authorization layer's refusals).
//!
//! Node-facing methods take the node's name from the verified certificate
//! (put in the request extensions by `authz`), never from the message.

use crate::ca::{Ca, Identity};
use crate::fleet::{Feed, Fleet, FleetError, plan};
use crate::metrics::Refusal;
use crate::store::StoreError;
use ballast_proto::enums::Outcome;
use ballast_proto::limits::{CheckedFacts, CheckedHost, CheckedReport};
use ballast_proto::pb;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

impl From<FleetError> for Status {
    fn from(e: FleetError) -> Status {
        match e {
            FleetError::Invalid(m) => Status::invalid_argument(m),
            FleetError::NotFound(m) => Status::not_found(m),
            FleetError::Conflict(m) => Status::failed_precondition(m),
            FleetError::Denied(m) => Status::permission_denied(m),
            FleetError::NeedsPrune(summary) => {
                let reasons = crate::fleet::prune_reasons(&summary);
                let message = crate::fleet::refusal_message(&reasons);
                let details = prost::Message::encode_to_vec(&pb::PruneRefusal {
                    reasons,
                    summary: crate::fleet::describe_bounded(&summary),
                });
                Status::with_details(tonic::Code::FailedPrecondition, message, details.into())
            }
            FleetError::Internal(e) => match store_exhaustion(&e) {
                Some(StoreError::NoSpace(_)) => {
                    tracing::error!(error = %format!("{e:#}"), "store full");
                    Status::resource_exhausted(
                        "no space left on the controller's data dir; nothing was written (reads still work, writes resume once space is freed)",
                    )
                }
                // The store's own words: what was refused and the bound, no values.
                Some(s) => {
                    tracing::error!(error = %format!("{e:#}"), "store refused the write");
                    Status::resource_exhausted(s.to_string())
                }
                None => {
                    tracing::error!(error = %format!("{e:#}"), "internal error");
                    Status::internal("internal error; see the controller's log")
                }
            },
        }
    }
}

/// The store error behind `e` when it says a bound was hit (space, request
/// size, etcd's quota): the caller can act on those, unlike other failures.
fn store_exhaustion(e: &anyhow::Error) -> Option<&StoreError> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<StoreError>())
        .find(|s| {
            matches!(
                s,
                StoreError::NoSpace(_) | StoreError::TooLarge(_) | StoreError::Full(_)
            )
        })
}

/// All three services over one fleet.
#[derive(Clone)]
pub struct Api {
    fleet: Arc<Fleet>,
    ca: Arc<Ca>,
    /// The dashboard's login links, when the dashboard is on.
    dashboard: Option<Arc<crate::dashboard::Access>>,
    plans: Arc<plan::Hub>,
    /// Turns for reading a newly connected node's runs back from the store.
    reloads: Arc<tokio::sync::Semaphore>,
}

/// Nodes whose runs are read back from the store at once (see `watch`).
pub const RELOADS_AT_ONCE: usize = 4;

impl Api {
    pub fn new(
        fleet: Arc<Fleet>,
        ca: Arc<Ca>,
        dashboard: Option<Arc<crate::dashboard::Access>>,
    ) -> Api {
        Api {
            reloads: Arc::new(tokio::sync::Semaphore::new(RELOADS_AT_ONCE)),
            plans: fleet.plan_hub(),
            fleet,
            ca,
            dashboard,
        }
    }

    /// The plan routing, for the server to close at stop.
    pub fn plans(&self) -> Arc<plan::Hub> {
        self.plans.clone()
    }
}

/// Runs store work off the async threads (the store fsyncs).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FleetError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(Status::from)
}

fn node_of<T>(req: &Request<T>) -> Result<String, Status> {
    match req.extensions().get::<Identity>() {
        Some(Identity::Node { name, .. }) => Ok(name.clone()),
        _ => Err(Status::unauthenticated("a node certificate is required")),
    }
}

fn admin_author<T>(req: &Request<T>, claimed: &str) -> String {
    let who = match req.extensions().get::<Identity>() {
        Some(Identity::Admin { name }) => name.clone(),
        _ => "unknown".into(),
    };
    let claimed: String = claimed
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    if claimed.is_empty() {
        who
    } else {
        format!("{claimed} ({who})")
    }
}

fn sources(req: pb::ApplyRequest) -> Vec<(String, String)> {
    req.sources
        .into_iter()
        .map(|s| (s.name, s.content))
        .collect()
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for Api {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let req = req.into_inner();
        let (fleet, ca) = (self.fleet.clone(), self.ca.clone());
        let enrolled =
            blocking(move || fleet.enroll(&ca, &req.token, &req.name, &req.csr_der)).await;
        let metrics = self.fleet.metrics();
        match enrolled {
            Ok(resp) => {
                metrics.enrolled();
                tracing::info!(node = %resp.name, "node enrolled");
                Ok(Response::new(resp))
            }
            Err(status) => {
                metrics.enrollment_refused(match status.code() {
                    tonic::Code::InvalidArgument => Refusal::Invalid,
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Refusal::Denied,
                    tonic::Code::FailedPrecondition
                    | tonic::Code::AlreadyExists
                    | tonic::Code::NotFound => Refusal::Conflict,
                    _ => Refusal::Internal,
                });
                Err(status)
            }
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::DesiredState, Status>> + Send>>;
type PlansStream = Pin<Box<dyn Stream<Item = Result<pb::PlanRequest, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for Api {
    type WatchStream = WatchStream;
    type PlansStream = PlansStream;

    async fn plans(&self, req: Request<pb::PlansRequest>) -> Result<Response<PlansStream>, Status> {
        let name = node_of(&req)?;
        let rx = self.plans.open(&name);
        tracing::debug!(node = %name, "plan stream opened");
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Ok,
        ))))
    }

    async fn plan_result(
        &self,
        req: Request<pb::PlanResultRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let name = node_of(&req)?;
        let req = req.into_inner();
        let answer = match req.report {
            Some(r) => plan::Answer::Report(
                CheckedReport::try_from(r)
                    .map_err(Status::invalid_argument)?
                    .into_inner(),
            ),
            None => {
                let mut reason = req.error;
                ballast_proto::limits::truncate(
                    &mut reason,
                    ballast_proto::limits::MAX_ERROR_BYTES,
                );
                plan::Answer::Refused(reason)
            }
        };
        self.plans.answer(&name, &req.id, answer)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let name = node_of(&req)?;
        let known = req.into_inner().known_hash;
        let mut rx = self.fleet.subscribe(&name)?;
        // It may come from a controller that died with its last runs: read
        // them back beside the stream, a few nodes at a time, so that a
        // storm of reconnects (a dead peer's agents failing over) neither
        // waits on the store nor fills the blocking pool with threads.
        let (fleet, n, reloads) = (self.fleet.clone(), name.clone(), self.reloads.clone());
        tokio::spawn(async move {
            let Ok(_turn) = reloads.acquire_owned().await else {
                return;
            };
            let node = n.clone();
            if let Err(e) = blocking(move || fleet.reload_reported(&node)).await {
                tracing::warn!(node = %n, error = %e.message(), "could not reload the node's reports");
            }
        });
        let (tx, out) = tokio::sync::mpsc::channel(1);
        let open = self.fleet.metrics().watch_opened();
        tokio::spawn(async move {
            let _open = open;
            let mut first = true;
            loop {
                let feed = rx.borrow_and_update().clone();
                match feed {
                    Feed::Revoked => {
                        let _ = tx
                            .send(Err(Status::permission_denied(format!(
                                "node {name} is revoked"
                            ))))
                            .await;
                        return;
                    }
                    Feed::State(state) => {
                        if !(first && state.hash == known)
                            && tx.send(Ok((*state).clone())).await.is_err()
                        {
                            return;
                        }
                    }
                }
                first = false;
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn report(&self, req: Request<pb::RunReport>) -> Result<Response<pb::Ack>, Status> {
        let name = node_of(&req)?;
        let report = CheckedReport::try_from(req.into_inner()).map_err(Status::invalid_argument)?;
        let (duration_ms, outcomes): (u64, Vec<Outcome>) = {
            let r = report.get();
            let outcomes = r
                .resources
                .iter()
                .filter_map(|o| Outcome::try_from(o.outcome).ok())
                .collect();
            (r.duration_ms, outcomes)
        };
        let fleet = self.fleet.clone();
        blocking(move || fleet.report(&name, report)).await?;
        self.fleet
            .metrics()
            .report(duration_ms, outcomes.into_iter());
        Ok(Response::new(pb::Ack {}))
    }

    async fn put_facts(&self, req: Request<pb::Facts>) -> Result<Response<pb::Ack>, Status> {
        let name = node_of(&req)?;
        let facts = CheckedFacts::try_from(req.into_inner()).map_err(Status::invalid_argument)?;
        let fleet = self.fleet.clone();
        blocking(move || fleet.put_facts(&name, facts)).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn put_host_figures(
        &self,
        req: Request<pb::HostFigures>,
    ) -> Result<Response<pb::Ack>, Status> {
        let name = node_of(&req)?;
        let host = CheckedHost::try_from(req.into_inner()).map_err(Status::invalid_argument)?;
        let fleet = self.fleet.clone();
        blocking(move || fleet.put_host(&name, host)).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let name = node_of(&req)?;
        self.fleet.heartbeat(&name);
        Ok(Response::new(pb::Ack {}))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Api {
    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let author = admin_author(&req, &req.get_ref().author);
        let req = req.into_inner();
        let message = req.message.clone();
        let allow_prune = req.allow_prune;
        let fleet = self.fleet.clone();
        let resp =
            blocking(move || fleet.apply(sources(req), &author, &message, 0, allow_prune)).await?;
        if resp.created {
            self.fleet.metrics().revision_created("apply");
            tracing::info!(
                revision = resp.revision,
                affected = resp.affected_nodes.len(),
                "revision applied"
            );
        }
        Ok(Response::new(resp))
    }

    async fn diff(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        let req = req.into_inner();
        let fleet = self.fleet.clone();
        Ok(Response::new(
            blocking(move || fleet.diff(sources(req))).await?,
        ))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let limit = match req.into_inner().limit {
            0 => 20,
            n => n as usize,
        };
        let fleet = self.fleet.clone();
        let revisions = blocking(move || fleet.history(limit)).await?;
        Ok(Response::new(pb::HistoryResponse { revisions }))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let author = admin_author(&req, &req.get_ref().author);
        let req = req.into_inner();
        let (number, allow_prune) = (req.revision, req.allow_prune);
        let fleet = self.fleet.clone();
        let resp = blocking(move || fleet.rollback(number, &author, allow_prune)).await?;
        if resp.created {
            self.fleet.metrics().revision_created("rollback");
        }
        Ok(Response::new(resp))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let req = req.into_inner();
        let ttl = match req.ttl_seconds {
            0 => crate::fleet::DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        let name = Some(req.name).filter(|n| !n.is_empty());
        let replace = req.replace_revoked;
        let fleet = self.fleet.clone();
        let labels = req.labels.into_iter().collect();
        let (token, expires_at_ms) =
            blocking(move || fleet.create_token(labels, ttl, name, replace)).await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token,
            expires_at_ms,
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(self.fleet.list_nodes(
            &req.r#where,
            req.page_size,
            &req.page_token,
        )?))
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::NodeDetail>, Status> {
        let name = req.into_inner().name;
        let fleet = self.fleet.clone();
        Ok(Response::new(
            blocking(move || fleet.get_node(&name)).await?,
        ))
    }

    async fn revoke_node(&self, req: Request<pb::NodeName>) -> Result<Response<pb::Ack>, Status> {
        let name = req.into_inner().name;
        let fleet = self.fleet.clone();
        blocking(move || fleet.revoke(&name)).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn create_dashboard_login(
        &self,
        _req: Request<pb::DashboardLoginRequest>,
    ) -> Result<Response<pb::DashboardLoginResponse>, Status> {
        let Some(access) = &self.dashboard else {
            return Err(Status::failed_precondition(
                "this controller's dashboard is off; start ballast serve with --dashboard-listen HOST:PORT (dashboard_listen: in controller.yaml)",
            ));
        };
        let (url, expires_at_ms) = access.login_link();
        tracing::info!("dashboard login link issued");
        Ok(Response::new(pb::DashboardLoginResponse {
            url,
            expires_at_ms,
        }))
    }

    async fn label_node(
        &self,
        req: Request<pb::LabelNodeRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = req.into_inner();
        let fleet = self.fleet.clone();
        blocking(move || fleet.label(&req.name, &req.labels.into_iter().collect())).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn get_rollout(
        &self,
        _req: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let status = self.fleet.rollout_status().ok_or_else(|| {
            Status::not_found(
                "the current revision has no rollout (its spec has no rollout policy)",
            )
        })?;
        Ok(Response::new(status))
    }

    async fn control_rollout(
        &self,
        req: Request<pb::ControlRolloutRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let author = admin_author(&req, &req.get_ref().author);
        let action = pb::RolloutAction::try_from(req.get_ref().action)
            .unwrap_or(pb::RolloutAction::Unspecified);
        let fleet = self.fleet.clone();
        Ok(Response::new(
            blocking(move || fleet.rollout_control(action, &author)).await?,
        ))
    }

    async fn plan(
        &self,
        req: Request<pb::PlanNodesRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let req = req.into_inner();
        let timeout = match req.timeout_ms {
            0 => plan::DEFAULT_PLAN_TIMEOUT,
            ms => Duration::from_millis(ms.into()).min(plan::MAX_PLAN_TIMEOUT),
        };
        let sources = req
            .sources
            .into_iter()
            .map(|s| (s.name, s.content))
            .collect();
        let filters = req.r#where;
        let fleet = self.fleet.clone();
        let flight = blocking(move || fleet.start_plan(sources, filters, timeout)).await?;
        let id = flight.id.clone();
        let resp = self.fleet.collect_plan(flight, timeout).await;
        tracing::info!(plan = %id, answered = resp.changed_nodes + resp.unchanged_nodes + resp.failed_nodes, changed = resp.changed_nodes, failed = resp.failed_nodes, unanswered = resp.unanswered.len(), "plan answered");
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: StoreError) -> Status {
        Status::from(FleetError::from(e))
    }

    #[test]
    fn store_bounds_map_to_resource_exhausted_with_the_store_message() {
        let big = status_of(StoreError::TooLarge(
            "etcd at 127.0.0.1:2379: request is too large".into(),
        ));
        assert_eq!(big.code(), tonic::Code::ResourceExhausted);
        assert!(big.message().contains("request is too large"), "{big:?}");
        assert!(big.message().contains("nothing was written"), "{big:?}");
        let full = status_of(StoreError::Full("etcd: NOSPACE alarm".into()));
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert!(full.message().contains("the store is full"), "{full:?}");
        let disk = status_of(StoreError::NoSpace(
            "/var/lib/ballast/ballast.redb: full".into(),
        ));
        assert_eq!(disk.code(), tonic::Code::ResourceExhausted);
        assert!(!disk.message().contains("/var/lib"), "{disk:?}");
        let other = status_of(StoreError::Engine("secret detail".into()));
        assert_eq!(other.code(), tonic::Code::Internal);
        assert!(!other.message().contains("secret"), "{other:?}");
    }
}
