//! Ballast's wire contract (generated from `proto/ballast.proto`, never edited)
//! the closed sets that cross crates (`enums`), and the one validated model of
//! desired state (`spec`).
//!
//! Invariant: wire types are turned into validated `spec` types once, at the
//! boundary (`spec::NodeState::from_document`); nothing else trusts raw bytes.

pub mod codec;
pub mod diff;
pub mod enums;
pub mod limits;
#[cfg(feature = "log")]
pub mod log;
pub mod spec;

/// Generated gRPC types and services.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("ballast.v1");
}

/// The encoded `FileDescriptorSet` of the contract, so tests can enumerate
/// every RPC method (the authorization table must cover each one).
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ballast_descriptor.bin"));

/// Largest gRPC message either side accepts or sends (desired state documents,
/// reports, apply sources). Bounded both ways.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Every fully qualified gRPC method path in the contract, e.g. `/ballast.v1.Admin/Apply`.
pub fn all_method_paths() -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(DESCRIPTOR_SET)
        .expect("descriptor set built by build.rs");
    let mut out = Vec::new();
    for file in set.file {
        let package = file.package.unwrap_or_default();
        for service in file.service {
            let sname = service.name.unwrap_or_default();
            for method in service.method {
                out.push(format!(
                    "/{package}.{sname}/{}",
                    method.name.unwrap_or_default()
                ));
            }
        }
    }
    out
}

/// `sha256:HEX` of some bytes: the one spelling of content hashes and fingerprints.
pub fn sha256_tag(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Durations as operators write them: `500ms`, `30s`, `5m`, `1h`, `7d`; more than zero.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number and a unit, such as 30s, 5m or 1h")
    })?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1_000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => {
            return Err(format!(
                "invalid duration {s:?}: the unit must be one of ms, s, m, h, d"
            ));
        }
    };
    if ms == 0 {
        return Err(format!("invalid duration {s:?}: it must be more than zero"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// At most this many controller addresses in one list.
pub const MAX_CONTROLLERS: usize = 16;

/// Checks one controller address: `HOST:PORT` with a DNS name, IPv4 or
/// bracketed IPv6 host and a port from 1 to 65535.
pub fn check_address(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("controller address {addr:?}: expected HOST:PORT"));
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || (host.starts_with('[')
                && host.ends_with(']')
                && host[1..host.len() - 1]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')));
    if !host_ok || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(format!(
            "controller address {addr:?}: expected HOST:PORT with a DNS name, IPv4 or [IPv6] host and a port from 1 to 65535"
        ));
    }
    Ok(())
}

/// The controllers of a comma-separated list (`a:8440,b:8440`), each
/// checked, in order, without repeats; one address is a list of one.
pub fn controllers(list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for addr in list.split(',').map(str::trim) {
        if addr.is_empty() {
            return Err(format!(
                "controller list {list:?}: an empty entry; expected HOST:PORT[,HOST:PORT...]"
            ));
        }
        check_address(addr)?;
        if !out.iter().any(|a| a == addr) {
            out.push(addr.to_owned());
        }
    }
    if out.len() > MAX_CONTROLLERS {
        return Err(format!(
            "controller list: {} addresses; at most {MAX_CONTROLLERS}",
            out.len()
        ));
    }
    Ok(out)
}

/// The host part of `HOST:PORT`, brackets of an IPv6 address removed.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn controller_lists_are_checked_entry_by_entry() {
        assert_eq!(
            controllers("a:8440, b.example:8440,a:8440,[::1]:9"),
            Ok(vec![
                "a:8440".into(),
                "b.example:8440".into(),
                "[::1]:9".into()
            ])
        );
        assert_eq!(
            controllers("a:8440,,b:1"),
            Err("controller list \"a:8440,,b:1\": an empty entry; expected HOST:PORT[,HOST:PORT...]".into())
        );
        assert!(
            controllers("a:8440,b")
                .unwrap_err()
                .contains("\"b\": expected HOST:PORT")
        );
        assert!(
            controllers("a:0")
                .unwrap_err()
                .contains("a port from 1 to 65535")
        );
        assert!(controllers("a b:1").is_err());
        let many: Vec<String> = (1..=17).map(|p| format!("h:{p}")).collect();
        assert_eq!(
            controllers(&many.join(",")),
            Err("controller list: 17 addresses; at most 16".into())
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("5").unwrap_err().contains("unit must be"));
        assert!(
            parse_duration("m")
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(parse_duration("0s").unwrap_err().contains("more than zero"));
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:8440"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8440"), "::1");
        assert_eq!(host_of("ctl.example:1"), "ctl.example");
    }
}
