//! The closed sets that cross crates as meaning: a resource's outcome, what
//! started a run, a node's status. Each is one Rust enum beside its wire enum,
//! with one lowercase name per variant (what the CLI prints, in JSON too).
//!
//! Invariant: the wire's `i32` becomes one of these only through `TryFrom`,
//! which refuses `UNSPECIFIED` (0) and every value this build does not know:
//! nothing is ever read as a default. Adding a variant is one line in the
//! `.proto` and one line in the `closed_enum!` call here; the compiler then
//! points at every `match` that must decide what it means.

use crate::pb;

/// A wire value that is not one of the enum's known variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {}; expected one of {}", describe(*.value), .allowed.join(", "))]
pub struct UnknownValue {
    /// The field as the message names it, e.g. `trigger`.
    pub field: &'static str,
    pub value: i32,
    pub allowed: &'static [&'static str],
}

fn describe(value: i32) -> String {
    match value {
        0 => "unspecified (0)".to_owned(),
        v => format!("unknown value {v}"),
    }
}

macro_rules! closed_enum {
    (
        $(#[$meta:meta])*
        $name:ident => pb::$pb:ident, field $field:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            const NAMES: &'static [&'static str] = &[$($text),+];

            /// The lowercase name operators and scripts read.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn to_pb(self) -> pb::$pb {
                match self {
                    $($name::$variant => pb::$pb::$variant,)+
                }
            }

            /// The variant of a lowercase name, as [`Self::as_str`] spells it.
            pub fn from_name(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl From<$name> for i32 {
            fn from(v: $name) -> i32 {
                v.to_pb() as i32
            }
        }

        impl TryFrom<i32> for $name {
            type Error = UnknownValue;

            fn try_from(value: i32) -> Result<$name, UnknownValue> {
                match pb::$pb::try_from(value) {
                    $(Ok(pb::$pb::$variant) => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        field: $field,
                        value,
                        allowed: $name::NAMES,
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_enum! {
    /// What one run did to one resource.
    Outcome => pb::Outcome, field "outcome" {
        Unchanged = "unchanged",
        Changed = "changed",
        Failed = "failed",
        /// Not tried: something it requires failed.
        Skipped = "skipped",
    }
}

closed_enum! {
    /// What started a run.
    Trigger => pb::Trigger, field "trigger" {
        /// A new desired state arrived.
        Change = "change",
        /// The periodic re-check of the same state.
        Resync = "resync",
        /// The agent started.
        Startup = "startup",
        /// An operator ran `ballast-agent apply` on the node.
        Local = "local",
    }
}

closed_enum! {
    /// A node's status as `ballast nodes` shows it.
    NodeStatus => pb::NodeStatus, field "status" {
        Converged = "converged",
        Converging = "converging",
        Failed = "failed",
        Drifted = "drifted",
        Stale = "stale",
        Revoked = "revoked",
        Pending = "pending",
        BootstrapFailed = "bootstrap-failed",
        Reconnecting = "reconnecting",
    }
}

impl NodeStatus {
    /// Statuses `ballast health` reports as problems (and exits non-zero on).
    pub fn needs_attention(self) -> bool {
        match self {
            NodeStatus::Failed | NodeStatus::Stale | NodeStatus::BootstrapFailed => true,
            NodeStatus::Converged
            | NodeStatus::Converging
            | NodeStatus::Drifted
            | NodeStatus::Revoked
            | NodeStatus::Pending
            | NodeStatus::Reconnecting => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_and_unknown_wire_values_are_refused_by_field() {
        let e = Outcome::try_from(0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "outcome: unspecified (0); expected one of unchanged, changed, failed, skipped"
        );
        let e = Trigger::try_from(99).unwrap_err();
        assert_eq!(
            e.to_string(),
            "trigger: unknown value 99; expected one of change, resync, startup, local"
        );
        assert!(NodeStatus::try_from(-1).is_err());
        assert!(NodeStatus::try_from(0).is_err());
    }

    #[test]
    fn every_variant_round_trips_through_the_wire_and_its_name() {
        for &v in Outcome::ALL {
            assert_eq!(Outcome::try_from(i32::from(v)), Ok(v));
            assert_eq!(Outcome::from_name(v.as_str()), Some(v));
        }
        for &v in Trigger::ALL {
            assert_eq!(Trigger::try_from(i32::from(v)), Ok(v));
            assert_eq!(Trigger::from_name(v.as_str()), Some(v));
        }
        for &v in NodeStatus::ALL {
            assert_eq!(NodeStatus::try_from(i32::from(v)), Ok(v));
            assert_eq!(NodeStatus::from_name(v.as_str()), Some(v));
        }
        assert_eq!(NodeStatus::BootstrapFailed.as_str(), "bootstrap-failed");
    }
}
