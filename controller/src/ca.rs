//! The controller's certificate authority: creates and loads the CA, the
//! server and admin certificates, signs node CSRs, and reads identities.
//!
//! Several controllers on one store share the CA and the admin certificate
//! through it ([`Ca::load_or_share`]); each issues its own server certificate.
//!
//! Invariant: a node certificate says exactly what the controller decided
//! (CN = the bound node name, OU = node, clientAuth only), never what the CSR asked.

use crate::store::{Compare, Op, Store};
use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::path::Path;
use std::time::Duration;

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

pub struct Issued {
    pub cert_pem: String,
    pub serial: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Admin { name: String },
    Node { name: String, serial: String },
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("path has a parent")?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn random_serial() -> anyhow::Result<SerialNumber> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random serial: {e}"))?;
    b[0] = (b[0] & 0x7f) | 0x40; // positive, and no leading zero byte to be trimmed in DER
    Ok(SerialNumber::from_slice(&b))
}

fn validity(params: &mut CertificateParams, d: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::seconds(d.as_secs() as i64);
}

fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("parse PEM: {e}"))?;
    Ok(p.contents)
}

impl Ca {
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Ca> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert_path.exists() && key_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path)
                .with_context(|| format!("read {}", cert_path.display()))?;
            let key = KeyPair::from_pem(
                &std::fs::read_to_string(&key_path)
                    .with_context(|| format!("read {}", key_path.display()))?,
            )
            .context("CA key")?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).context("CA certificate")?;
            let cert_der = pem_der(&cert_pem)?;
            return Ok(Ca {
                issuer,
                cert_pem,
                cert_der,
            });
        }
        let key = KeyPair::generate().context("generate CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Ballast CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        validity(&mut params, Duration::from_secs(10 * 365 * 86400));
        let cert = params.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_private(&cert_path, cert.pem().as_bytes(), 0o644)?;
        let cert_pem = cert.pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_der: cert.der().to_vec(),
            cert_pem,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn fingerprint(&self) -> String {
        ballast_proto::sha256_tag(&self.cert_der)
    }

    fn signed_by_us(&self, pem: &str) -> bool {
        let Ok(der) = pem_der(pem) else { return false };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
            return false;
        };
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(&self.cert_der) else {
            return false;
        };
        cert.verify_signature(Some(ca.public_key())).is_ok() && cert.validity().is_valid()
    }

    pub fn ensure_server_cert(
        &self,
        dir: &Path,
        extra_names: &[String],
    ) -> anyhow::Result<(String, String)> {
        let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        for n in extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        if let (Ok(chain), Ok(key)) = (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) && self.signed_by_us(&chain)
            && covers(&chain, &names)
        {
            return Ok((chain, key));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(
                    n.clone()
                        .try_into()
                        .with_context(|| format!("advertised name {n:?}"))?,
                )),
            })
            .collect::<anyhow::Result<_>>()?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Ballast controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        validity(&mut params, Duration::from_secs(2 * 365 * 86400));
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = format!("{}{}", cert.pem(), self.cert_pem);
        write_private(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_private(&cert_path, chain.as_bytes(), 0o644)?;
        Ok((chain, key.serialize_pem()))
    }

    pub fn ensure_admin_cert(&self, dir: &Path) -> anyhow::Result<(String, String)> {
        let (cert_path, key_path) = (dir.join("admin.pem"), dir.join("admin.key"));
        if let (Ok(cert), Ok(key)) = (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) && self.signed_by_us(&cert)
        {
            return Ok((cert, key));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "admin");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        validity(&mut params, Duration::from_secs(365 * 86400));
        let cert = params.signed_by(&key, &self.issuer)?;
        write_private(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_private(&cert_path, cert.pem().as_bytes(), 0o600)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    pub fn sign_node_csr(
        &self,
        csr_der: &[u8],
        node_name: &str,
        valid_for: Duration,
    ) -> anyhow::Result<Issued> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| anyhow::anyhow!("invalid CSR: {e}"))?;
        // Only the CSR's public key is used; everything else is ours.
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, node_name);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "node");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = random_serial()?;
        params.serial_number = Some(serial.clone());
        validity(&mut params, valid_for);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: hex::encode(serial.to_bytes()),
        })
    }
}

/// Where a fleet shared by several controllers keeps its identity, under the
/// fleet's prefix: written once (compare-and-swap on absence) by the first
/// controller, read by every other. Holds the CA key in clear: anyone who
/// can read the prefix in etcd can sign certificates.
pub const SHARED_IDENTITY_KEY: &str = "identity/ca";

/// The CA and admin credentials every controller of one fleet uses.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedIdentity {
    ca_cert_pem: String,
    ca_key_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

/// Writes `text` to `path` (mode `mode`) unless it already holds exactly that.
fn sync_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    write_private(path, text.as_bytes(), mode)
}

impl Ca {
    /// The fleet's CA when several controllers share one store: the one
    /// stored under [`SHARED_IDENTITY_KEY`] (copied into `dir`, replacing a
    /// different local CA, so the CLI and the bootstrap on this machine use
    /// it), or, when none is stored yet, this controller's own (existing or
    /// new) with its admin certificate, published with a compare-and-swap;
    /// losing that race loads the winner's. A controller then issues its own
    /// server certificate from it (`ensure_server_cert`).
    pub fn load_or_share(store: &dyn Store, dir: &Path) -> anyhow::Result<Ca> {
        for _ in 0..3 {
            if let Some(entry) = store.get(SHARED_IDENTITY_KEY)? {
                let id: SharedIdentity = serde_json::from_slice(&entry.value)
                    .with_context(|| format!("decode stored {SHARED_IDENTITY_KEY}"))?;
                sync_file(&dir.join("ca.key"), &id.ca_key_pem, 0o600)?;
                sync_file(&dir.join("ca.pem"), &id.ca_cert_pem, 0o644)?;
                sync_file(&dir.join("admin.key"), &id.admin_key_pem, 0o600)?;
                sync_file(&dir.join("admin.pem"), &id.admin_cert_pem, 0o600)?;
                return Ca::load_or_create(dir);
            }
            let ca = Ca::load_or_create(dir)?;
            let (admin_cert_pem, admin_key_pem) = ca.ensure_admin_cert(dir)?;
            let key_path = dir.join("ca.key");
            let id = SharedIdentity {
                ca_cert_pem: ca.cert_pem.clone(),
                ca_key_pem: std::fs::read_to_string(&key_path)
                    .with_context(|| format!("read {}", key_path.display()))?,
                admin_cert_pem,
                admin_key_pem,
            };
            let value = serde_json::to_vec(&id).expect("identity serializes");
            if store.txn(
                &[Compare::Absent(SHARED_IDENTITY_KEY.into())],
                &[Op::Put(SHARED_IDENTITY_KEY.into(), value)],
            )? {
                tracing::info!(fingerprint = %ca.fingerprint(), "published this controller's CA for the fleet");
                return Ok(ca);
            }
        }
        bail!("{SHARED_IDENTITY_KEY} kept changing in the store while starting; try again")
    }
}

fn covers(chain_pem: &str, names: &[String]) -> bool {
    let Ok(der) = pem_der(chain_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    names.iter().all(|n| {
        san.value.general_names.iter().any(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(d) => d == n,
            x509_parser::extensions::GeneralName::IPAddress(b) => {
                match n.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(ip)) => *b == ip.octets().as_slice(),
                    Ok(std::net::IpAddr::V6(ip)) => *b == ip.octets().as_slice(),
                    Err(_) => false,
                }
            }
            _ => false,
        })
    })
}

pub fn identity_from_cert(der: &[u8]) -> anyhow::Result<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("parse certificate: {e}"))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    let ou = first(&mut subject.iter_organizational_unit());
    let cn = first(&mut subject.iter_common_name()).context("certificate has no common name")?;
    match ou.as_deref() {
        Some("admin") => Ok(Identity::Admin { name: cn }),
        Some("node") => Ok(Identity::Node {
            name: cn,
            serial: hex::encode(cert.tbs_certificate.raw_serial()),
        }),
        other => bail!("certificate has no Ballast role (OU {other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::prelude::*;

    fn csr(cn: &str, ou: Option<&str>, eku: Vec<ExtendedKeyUsagePurpose>) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(ou) = ou {
            p.distinguished_name
                .push(DnType::OrganizationalUnitName, ou);
        }
        p.extended_key_usages = eku;
        p.serialize_request(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_ca_persists_and_keeps_its_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ca::load_or_create(dir.path()).unwrap();
        let b = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert!(a.fingerprint().starts_with("sha256:") && a.fingerprint().len() == 71);
        a.ensure_admin_cert(dir.path()).unwrap();
        a.ensure_server_cert(dir.path(), &[]).unwrap();
        for key in ["ca.key", "server.key", "admin.key"] {
            assert_eq!(
                std::fs::metadata(dir.path().join(key))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o600,
                "{key}"
            );
        }
    }

    #[test]
    fn a_node_certificate_says_what_the_controller_decided_not_what_the_csr_asked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let wants_admin = csr(
            "admin",
            Some("admin"),
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let issued = ca
            .sign_node_csr(&wants_admin, "web-1", Duration::from_secs(3600))
            .unwrap();
        let der = pem_der(&issued.cert_pem).unwrap();
        assert_eq!(
            identity_from_cert(&der).unwrap(),
            Identity::Node {
                name: "web-1".into(),
                serial: issued.serial.clone()
            }
        );
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty());
        assert!(
            cert.subject_alternative_name().unwrap().is_none(),
            "no SAN from the CSR"
        );
        let (_, ca_cert) = parse_x509_certificate(ca.cert_der()).unwrap();
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_ok());
    }

    #[test]
    fn a_csr_with_a_broken_signature_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let mut bad = csr("n", None, vec![]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(
            ca.sign_node_csr(&bad, "n", Duration::from_secs(60))
                .is_err()
        );
    }

    #[test]
    fn the_server_certificate_is_reissued_when_a_name_is_added() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let (first, _) = ca.ensure_server_cert(dir.path(), &[]).unwrap();
        let (same, _) = ca.ensure_server_cert(dir.path(), &[]).unwrap();
        assert_eq!(first, same, "reused while it covers every name");
        let (wider, _) = ca
            .ensure_server_cert(dir.path(), &["ctl.example".into(), "10.1.2.3".into()])
            .unwrap();
        assert_ne!(first, wider);
        assert!(covers(
            &wider,
            &[
                "localhost".into(),
                "127.0.0.1".into(),
                "ctl.example".into(),
                "10.1.2.3".into()
            ]
        ));
        assert!(
            wider.matches("BEGIN CERTIFICATE").count() == 2,
            "leaf then CA, so agents can pin the CA"
        );
    }

    #[test]
    fn identities_come_from_the_ou() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let (admin, _) = ca.ensure_admin_cert(dir.path()).unwrap();
        assert_eq!(
            identity_from_cert(&pem_der(&admin).unwrap()).unwrap(),
            Identity::Admin {
                name: "admin".into()
            }
        );
        assert!(
            identity_from_cert(ca.cert_der()).is_err(),
            "the CA itself has no Ballast role"
        );
    }
}
