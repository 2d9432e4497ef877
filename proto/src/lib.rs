//! Ballast's wire contract (generated from `proto/ballast.proto`, never edited)
//! and the one validated model of desired state (`spec`).
//!
//! Invariant: wire types are turned into validated `spec` types once, at the
//! boundary (`spec::NodeState::from_document`); nothing else trusts raw bytes.

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
