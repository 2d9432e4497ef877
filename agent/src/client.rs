//! The agent's side of the wire: TLS to the controller (pinned CA for
//! enrollment, mutual TLS afterwards) and enrollment itself.
//!
//! Invariants: the node's private key is generated here and never sent; the
//! controller is always verified, first against the pinned CA fingerprint,
//! then against the CA certificate kept in the state dir (`state` keeps the
//! files). There is no unverified mode.

use crate::state::{AgentConfig, Enrollment, StateDir};
use anyhow::{Context, bail};
use ballast_proto::pb;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// How the agent decides it talks to the right controller.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Before enrollment: the controller must present a CA whose certificate
    /// has this `sha256:HEX` fingerprint, and a server certificate it signed.
    Pin(String),
    /// After enrollment: the CA certificate (PEM) kept in the state dir.
    Ca(String),
}

/// A client certificate and its key, PEM.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Longest wait for TCP, TLS and HTTP/2 set-up with the controller.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the controller to answer an enrollment.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies the controller against a pinned CA fingerprint: the presented
/// chain must contain a certificate with that fingerprint, and the server
/// certificate must verify (signature, validity, name) with it as the only root.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| ballast_proto::sha256_tag(c.as_ref()) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the controller did not present the pinned CA {}",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks the `sha256:HEX` spelling of a fingerprint.
pub fn check_fingerprint(fp: &str) -> anyhow::Result<()> {
    let hex = fp.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        bail!(
            "invalid CA fingerprint {fp:?}: expected sha256: and 64 lowercase hex digits (print it with `ballast ca fingerprint`)"
        );
    }
    Ok(())
}

fn tls_config(
    trust: &Trust,
    identity: Option<&ClientCert>,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match trust {
        Trust::Pin(pin) => {
            check_fingerprint(pin)?;
            // A custom verifier, not a disabled one: see PinnedCa.
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCa {
                    pin: pin.clone(),
                    provider,
                }))
        }
        Trust::Ca(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(cert.context("CA certificate PEM")?)
                    .context("CA certificate")?;
            }
            if roots.is_empty() {
                bail!("no CA certificate in the PEM given");
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .context("client certificate PEM")?;
            let key =
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).context("client key PEM")?;
            builder
                .with_client_auth_cert(certs, key)
                .context("client certificate and key")?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Addresses kept for one controller name: a name that resolves to more
/// is cut to its first ones.
pub const MAX_ADDRESSES_PER_NAME: usize = 8;

/// One place to reach a controller: the `HOST:PORT` as listed (the name its
/// certificate must cover) and, once resolved, one of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// `None` when the name did not resolve: connecting then says why.
    pub addr: Option<SocketAddr>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(a) if a.to_string() != self.name => write!(f, "{} ({a})", self.name),
            _ => f.write_str(&self.name),
        }
    }
}

/// Every address of every controller in `list` (`HOST:PORT[,...]`), resolved
/// now: a DNS name that resolves to several controllers gives one target
/// each, so that a controller that accepts connections but never answers
/// (frozen, half-dead) is passed over for the next address rather than
/// tried again under the same name.
pub async fn targets(list: &str) -> anyhow::Result<Vec<Target>> {
    let names = ballast_proto::controllers(list).map_err(anyhow::Error::msg)?;
    let mut out: Vec<Target> = Vec::new();
    for name in names {
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(name.as_str()).await {
            Ok(found) => found.collect(),
            Err(e) => {
                tracing::warn!(controller = %name, error = %e, "controller name does not resolve");
                Vec::new()
            }
        };
        let mut kept = 0;
        for addr in addrs {
            if kept == MAX_ADDRESSES_PER_NAME {
                break;
            }
            if !out.iter().any(|t| t.name == name && t.addr == Some(addr)) {
                out.push(Target {
                    name: name.clone(),
                    addr: Some(addr),
                });
                kept += 1;
            }
        }
        if kept == 0 {
            out.push(Target { name, addr: None });
        }
    }
    Ok(out)
}

/// Opens a gRPC channel over our own TLS (the URI says `http` because tonic
/// must not add its own TLS layer on top of ours).
pub async fn channel(
    controller: &str,
    trust: &Trust,
    identity: Option<&ClientCert>,
) -> anyhow::Result<Channel> {
    let target = Target {
        name: controller.to_owned(),
        addr: None,
    };
    channel_to(&target, trust, identity).await
}

/// Like [`channel`], connecting to the target's resolved address and
/// verifying the certificate against its listed name.
pub async fn channel_to(
    target: &Target,
    trust: &Trust,
    identity: Option<&ClientCert>,
) -> anyhow::Result<Channel> {
    channel_from(target, trust, identity, None).await
}

/// Like [`channel_to`], from a chosen local address (`None`: the system's
/// choice, as the agent does). A load generator standing for many hosts
/// gives each its own address: from one address the kernel runs short of
/// local ports towards one controller past about 14,000 connections, and
/// every connect then scans them all.
pub async fn channel_from(
    target: &Target,
    trust: &Trust,
    identity: Option<&ClientCert>,
    source: Option<std::net::IpAddr>,
) -> anyhow::Result<Channel> {
    let controller = target.name.as_str();
    if source.is_some() && target.addr.is_none() {
        bail!(
            "connect to controller at {target} from a chosen address: the name must be resolved first"
        );
    }
    let config = Arc::new(tls_config(trust, identity)?);
    let connector = tokio_rustls::TlsConnector::from(config);
    let server_name = ServerName::try_from(ballast_proto::host_of(controller).to_owned())
        .with_context(|| format!("controller address {controller:?}: expected HOST:PORT"))?;
    let addr = target.clone();
    let endpoint = Endpoint::from_shared(format!("http://{controller}"))
        .with_context(|| format!("controller address {controller:?}: expected HOST:PORT"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_: http::Uri| {
        let (connector, server_name, addr) = (connector.clone(), server_name.clone(), addr.clone());
        async move {
            let tcp = match (addr.addr, source) {
                (Some(at), Some(from)) => {
                    let socket = match at {
                        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                    };
                    socket.bind(SocketAddr::new(from, 0))?;
                    socket.connect(at).await?
                }
                (Some(at), None) => tokio::net::TcpStream::connect(at).await?,
                (None, _) => tokio::net::TcpStream::connect(addr.name.as_str()).await?,
            };
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    }));
    // The connector's timeout covers TCP and TLS; this one the whole set-up.
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(channel) => channel.with_context(|| format!("connect to controller at {target}")),
        Err(_) => {
            bail!("connect to controller at {target}: no answer within {CONNECT_TIMEOUT:?}")
        }
    }
}

/// An Agent-service client with the message limits set.
pub fn agent_client(channel: Channel) -> pb::agent_client::AgentClient<Channel> {
    pb::agent_client::AgentClient::new(channel)
        .max_decoding_message_size(ballast_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(ballast_proto::MAX_MESSAGE_BYTES)
}

/// The enrolled identity in a state dir.
pub struct Enrolled {
    pub config: AgentConfig,
    pub ca_pem: String,
    pub cert: ClientCert,
}

impl Enrolled {
    /// The identity `enroll` left in `state_dir` (see [`StateDir::load_enrollment`]).
    pub fn load(state_dir: impl AsRef<Path>) -> anyhow::Result<Enrolled> {
        let e = StateDir::new(state_dir.as_ref()).load_enrollment()?;
        Ok(Enrolled {
            config: e.config,
            ca_pem: e.ca_pem,
            cert: ClientCert {
                cert_pem: e.cert_pem,
                key_pem: e.key_pem,
            },
        })
    }

    /// A mutual-TLS channel to one resolved address of a controller.
    pub async fn channel_to(&self, target: &Target) -> anyhow::Result<Channel> {
        self.channel_from(target, None).await
    }

    /// Like [`Enrolled::channel_to`], from a chosen local address (see [`channel_from`]).
    pub async fn channel_from(
        &self,
        target: &Target,
        source: Option<std::net::IpAddr>,
    ) -> anyhow::Result<Channel> {
        let trust = Trust::Ca(self.ca_pem.clone());
        channel_from(target, &trust, Some(&self.cert), source).await
    }

    /// A mutual-TLS channel to `controller`, or to the first controller
    /// recorded at enrollment.
    pub async fn channel(&self, controller: Option<&str>) -> anyhow::Result<Channel> {
        let first;
        let controller = match controller {
            Some(c) => c,
            None => {
                first = ballast_proto::controllers(&self.config.controller)
                    .map_err(anyhow::Error::msg)
                    .context("agent.json")?
                    .remove(0);
                &first
            }
        };
        channel(
            controller,
            &Trust::Ca(self.ca_pem.clone()),
            Some(&self.cert),
        )
        .await
    }
}

/// Enrolls this node: makes a key here, sends a CSR with the one-time token,
/// and keeps the signed certificate, the CA and the settings in `state_dir`.
pub async fn enroll(
    state_dir: &Path,
    controller: &str,
    token: &str,
    fingerprint: &str,
    name: &str,
) -> anyhow::Result<pb::EnrollResponse> {
    check_fingerprint(fingerprint)?;
    ballast_proto::spec::validate::node_name(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let state = StateDir::create(state_dir)?;
    let key = rcgen::KeyPair::generate().context("generate node key")?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).context("CSR parameters")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key).context("create CSR")?;
    let controllers = ballast_proto::controllers(controller).map_err(anyhow::Error::msg)?;
    // The first controller that answers enrolls us; one that refuses ends
    // it (the token is one-time: another controller would refuse it too).
    let mut unreachable = Vec::new();
    let mut reached = None;
    for addr in &controllers {
        match self::channel(addr, &Trust::Pin(fingerprint.to_owned()), None).await {
            Ok(channel) => {
                reached = Some((addr.as_str(), channel));
                break;
            }
            Err(e) => {
                tracing::warn!(controller = %addr, error = %format!("{e:#}"), "controller unreachable; trying the next");
                unreachable.push(format!("{e:#}"));
            }
        }
    }
    let Some((controller, channel)) = reached else {
        bail!("no controller reachable: {}", unreachable.join("; "));
    };
    let mut client = pb::enrollment_client::EnrollmentClient::new(channel);
    let call = client.enroll(pb::EnrollRequest {
        token: token.to_owned(),
        name: name.to_owned(),
        csr_der: csr.der().to_vec(),
    });
    let resp = tokio::time::timeout(ENROLL_TIMEOUT, call)
        .await
        .map_err(|_| {
            anyhow::anyhow!("enrollment at {controller}: no answer within {ENROLL_TIMEOUT:?}")
        })?
        .map_err(|s| anyhow::anyhow!("enrollment refused by {controller}: {}", s.message()))?
        .into_inner();
    // The CA we were given must be the one we pinned.
    let ca_der = CertificateDer::from_pem_slice(resp.ca_pem.as_bytes())
        .context("CA certificate from the controller")?;
    if ballast_proto::sha256_tag(ca_der.as_ref()) != fingerprint {
        bail!(
            "the controller returned a CA certificate that does not match the pinned fingerprint {fingerprint}"
        );
    }
    state.store_enrollment(&Enrollment {
        config: AgentConfig {
            // Every controller, as given: the daemon fails over among them.
            controller: controllers.join(","),
            name: resp.name.clone(),
            ca_fingerprint: fingerprint.to_owned(),
        },
        ca_pem: resp.ca_pem.clone(),
        cert_pem: resp.certificate_pem.clone(),
        key_pem: key.serialize_pem(),
    })?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_must_be_sha256_hex() {
        assert!(check_fingerprint(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_fingerprint("sha256:abc").is_err());
        assert!(check_fingerprint(&"a".repeat(64)).is_err());
        assert!(check_fingerprint(&format!("sha256:{}", "A".repeat(64))).is_err());
    }
}
