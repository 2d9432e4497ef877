//! Bootstrap of new nodes: cloud-init user-data and shell scripts rendered from
//! the templates in `bootstrap/`, and the HTTPS routes (on the controller's one
//! port) that serve the CA certificate, the installer and the agent binary.
//!
//! Invariants: rendered output holds only the controller address, the CA
//! fingerprint, an expiring one-time token and a node name, each checked
//! against a strict pattern first, so nothing can break out of its quoting.
//! The scripts need only python3 (`bootstrap/fetch.py`, embedded in both) and
//! coreutils, and the token never appears on a command line.

use anyhow::bail;
use std::path::PathBuf;

const BOOTSTRAP_SH: &str = include_str!("../../bootstrap/bootstrap.sh.in");
const INSTALL_SH: &str = include_str!("../../bootstrap/install.sh.in");
/// The download helper both scripts embed (python3's standard library only).
pub const FETCH_PY: &str = include_str!("../../bootstrap/fetch.py");
const CLOUD_INIT: &str = include_str!("../../bootstrap/cloud-init.yaml.in");
const AGENT_UNIT: &str = include_str!("../../packaging/ballast-agent.service");

/// Paths served without a client certificate (see `authz`).
pub const CA_PATH: &str = "/bootstrap/ca.pem";
pub const INSTALL_PATH: &str = "/bootstrap/install.sh";
pub const AGENT_PATH: &str = "/bootstrap/ballast-agent";
pub const AGENT_SHA_PATH: &str = "/bootstrap/ballast-agent.sha256";

/// `HOST:PORT` with a DNS name, IPv4 or bracketed IPv6 host.
pub fn check_controller(addr: &str) -> anyhow::Result<()> {
    ballast_proto::check_address(addr).map_err(anyhow::Error::msg)
}

fn check_token(token: &str) -> anyhow::Result<()> {
    let hex = token.strip_prefix("blt_").unwrap_or("");
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("token: expected blt_ and 64 hex digits, as printed by `ballast token create`");
    }
    Ok(())
}

fn check_fingerprint(fp: &str) -> anyhow::Result<()> {
    let hex = fp.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("CA fingerprint {fp:?}: expected sha256: and 64 hex digits");
    }
    Ok(())
}

/// What every bootstrap output is made from.
#[derive(Debug, Clone)]
pub struct Params {
    pub controller: String,
    pub fingerprint: String,
    pub token: String,
    /// Empty: the node's hostname (or the token's bound name).
    pub name: String,
}

impl Params {
    fn check(&self) -> anyhow::Result<()> {
        // One controller or several, comma-separated: the node tries them in order.
        ballast_proto::controllers(&self.controller).map_err(anyhow::Error::msg)?;
        check_fingerprint(&self.fingerprint)?;
        check_token(&self.token)?;
        if !self.name.is_empty() {
            ballast_proto::spec::validate::node_name(&self.name)
                .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
        }
        Ok(())
    }
}

/// The POSIX shell script (`ballast bootstrap script`).
pub fn script(p: &Params) -> anyhow::Result<String> {
    p.check()?;
    Ok(BOOTSTRAP_SH
        .replace("@FETCH_PY@", FETCH_PY.trim_end())
        .replace("@CONTROLLER@", &p.controller)
        .replace("@FINGERPRINT@", &p.fingerprint)
        .replace("@TOKEN@", &p.token)
        .replace("@NAME@", &p.name))
}

/// `#cloud-config` user-data that writes and runs the same script.
pub fn cloud_init(p: &Params) -> anyhow::Result<String> {
    let script = script(p)?;
    Ok(CLOUD_INIT
        .replace("@CONTROLLER@", &p.controller)
        .replace("@SCRIPT_B64@", &base64(script.as_bytes())))
}

/// The installer the controller serves; `controller` is the address the node used.
pub fn install_script(controller: &str, fingerprint: &str) -> anyhow::Result<String> {
    check_controller(controller)?;
    check_fingerprint(fingerprint)?;
    Ok(INSTALL_SH
        .replace("@FETCH_PY@", FETCH_PY.trim_end())
        .replace("@CONTROLLER@", controller)
        .replace("@FINGERPRINT@", fingerprint)
        .replace("@UNIT@", AGENT_UNIT.trim_end()))
}

/// Standard base64 with padding (cloud-init's `encoding: b64`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Where the agent binary served to new nodes is found when not configured:
/// beside this executable, then the package's locations.
pub fn default_agent_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("ballast-agent")));
    beside
        .into_iter()
        .chain([
            PathBuf::from("/usr/lib/ballast/ballast-agent"),
            PathBuf::from("/usr/bin/ballast-agent"),
        ])
        .find(|p| p.is_file())
}

/// The HTTPS routes for bootstrap, served on the gRPC port. The CA
/// certificate is public: a node keeps it only when its SHA-256 matches the
/// fingerprint it was given.
pub fn routes(
    agent_binary: Option<PathBuf>,
    fingerprint: String,
    ca_pem: String,
    fallback_controller: String,
) -> axum::Router {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    let binary = std::sync::Arc::new(agent_binary);
    let read_agent = {
        let binary = binary.clone();
        move || {
            let binary = binary.clone();
            async move {
                match binary.as_ref() {
                    None => Err((StatusCode::NOT_FOUND, "this controller has no agent binary to serve; start it with --agent-binary PATH\n".to_string())),
                    Some(p) => tokio::fs::read(p).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("read agent binary {}: {e}\n", p.display()))),
                }
            }
        }
    };
    let agent = {
        let read = read_agent.clone();
        move || async move {
            read()
                .await
                .map(|bytes| ([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
        }
    };
    let agent_sha = move || async move {
        read_agent().await.map(|bytes| {
            use sha2::Digest;
            format!(
                "{}  ballast-agent\n",
                hex::encode(sha2::Sha256::digest(&bytes))
            )
        })
    };
    let install = move |headers: HeaderMap| async move {
        // The node fetches with the address it knows us by; use it in the installer.
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        let controller = host
            .filter(|h| check_controller(h).is_ok())
            .unwrap_or(fallback_controller);
        match install_script(&controller, &fingerprint) {
            Ok(text) => ([(header::CONTENT_TYPE, "text/x-shellscript")], text).into_response(),
            Err(e) => (StatusCode::BAD_REQUEST, format!("{e:#}\n")).into_response(),
        }
    };
    let ca = move || async move { ([(header::CONTENT_TYPE, "application/x-pem-file")], ca_pem) };
    axum::Router::new()
        .route(CA_PATH, get(ca))
        .route(INSTALL_PATH, get(install))
        .route(AGENT_PATH, get(agent))
        .route(AGENT_SHA_PATH, get(agent_sha))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            controller: "ctl.example:8440".into(),
            fingerprint: format!("sha256:{}", "ab".repeat(32)),
            token: format!("blt_{}", "0f".repeat(32)),
            name: "web-1".into(),
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar!"), "Zm9vYmFyIQ==");
    }

    #[test]
    fn script_holds_only_the_token_fingerprint_address_and_name() {
        let s = script(&params()).unwrap();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("BALLAST_CONTROLLER='ctl.example:8440'"));
        assert!(s.contains(&params().token) && s.contains(&params().fingerprint));
        assert!(!s.contains('@'), "every placeholder is filled");
        assert!(!s.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_list_of_controllers_reaches_the_node_whole_and_checked() {
        let mut p = params();
        p.controller = "a.example:8440,b.example:8440".into();
        let s = script(&p).unwrap();
        assert!(s.contains("BALLAST_CONTROLLER='a.example:8440,b.example:8440'"));
        p.controller = "a.example:8440,b';reboot;'x:1".into();
        assert!(
            script(&p)
                .unwrap_err()
                .to_string()
                .contains("expected HOST:PORT")
        );
        // The installer enrolls with the list the bootstrap script exports.
        let i = install_script("a.example:8440", &p.fingerprint).unwrap();
        assert!(i.contains(r#"controller="${BALLAST_CONTROLLER:-a.example:8440}""#));
    }

    #[test]
    fn cloud_init_is_cloud_config_with_the_script() {
        let y = cloud_init(&params()).unwrap();
        assert!(y.starts_with("#cloud-config\n"));
        let b64 = y
            .lines()
            .find_map(|l| l.trim().strip_prefix("content: "))
            .unwrap();
        assert_eq!(b64, base64(script(&params()).unwrap().as_bytes()));
    }

    #[test]
    fn hostile_values_are_refused_before_rendering() {
        for (field, value) in [
            ("controller", "ctl';reboot;'x:1"),
            ("controller", "ctl"),
            ("token", "blt_zz"),
            ("name", "a b"),
            ("fingerprint", "sha256:xyz"),
        ] {
            let mut p = params();
            match field {
                "controller" => p.controller = value.into(),
                "token" => p.token = value.into(),
                "name" => p.name = value.into(),
                _ => p.fingerprint = value.into(),
            }
            assert!(script(&p).is_err(), "{field}={value:?} must be refused");
        }
        assert!(check_controller("[::1]:8440").is_ok());
        assert!(check_controller("10.0.0.1:0").is_err());
    }

    #[test]
    fn the_token_never_reaches_a_command_line() {
        let p = params();
        let rendered = [
            script(&p).unwrap(),
            install_script(&p.controller, &p.fingerprint).unwrap(),
        ];
        for text in &rendered {
            assert!(!text.contains("--token"), "no --token flag:\n{text}");
            for line in text.lines().map(str::trim) {
                if line.starts_with('#') {
                    continue;
                }
                if line.contains(&p.token) {
                    assert_eq!(line, format!("BALLAST_TOKEN='{}'", p.token));
                }
                if line.contains("$BALLAST_TOKEN") || line.contains("${BALLAST_TOKEN") {
                    // Only the `:` builtin may expand it (to check it is set).
                    assert!(line.starts_with(": \"${BALLAST_TOKEN:?"), "{line}");
                }
            }
        }
        // The installer hands the token to the agent through its environment.
        assert!(rendered[1].contains("export BALLAST_TOKEN"));
        assert!(
            rendered[0].contains("export BALLAST_CONTROLLER BALLAST_CA_FINGERPRINT BALLAST_TOKEN")
        );
    }

    #[test]
    fn scripts_need_neither_curl_nor_openssl() {
        let p = params();
        for text in [
            script(&p).unwrap(),
            install_script(&p.controller, &p.fingerprint).unwrap(),
        ] {
            for tool in ["curl", "openssl", "wget"] {
                assert!(
                    !text
                        .lines()
                        .any(|l| !l.trim().starts_with('#') && l.contains(tool)),
                    "{tool} in:\n{text}"
                );
            }
            assert!(text.contains("import ssl") && !text.contains("@FETCH_PY@"));
        }
    }

    #[test]
    fn installer_embeds_the_agent_unit() {
        let s = install_script("127.0.0.1:8440", &params().fingerprint).unwrap();
        assert!(s.contains("ExecStart=/usr/bin/ballast-agent run"));
        assert!(!s.contains("@UNIT@") && !s.contains("@CONTROLLER@"));
    }
}
