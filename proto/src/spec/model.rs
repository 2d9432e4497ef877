//! Types of the validated model. Field names are the YAML keys.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Node labels and group match selectors.
pub type Labels = BTreeMap<String, String>;
/// Template variables of a node group (any YAML/JSON value).
pub type Vars = BTreeMap<String, serde_json::Value>;

/// The whole desired state of a fleet: every source file merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Spec {
    pub roles: BTreeMap<String, Role>,
    /// Node groups (top-level `groups:`), which select nodes and give them roles.
    pub groups: BTreeMap<String, NodeGroup>,
    /// How a change of this spec reaches the fleet (top-level `rollout:`);
    /// none: every node at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::rollout::RolloutPolicy>,
}

/// A reusable bundle of resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Role {
    pub resources: Vec<Resource>,
    /// Where each resource was declared (same order as `resources`).
    #[serde(skip)]
    pub origins: Vec<Origin>,
    /// Where the role was declared, for error messages.
    #[serde(default, skip_serializing_if = "Origin::is_unknown")]
    pub origin: Origin,
}

/// Selects nodes by labels and gives them roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeGroup {
    /// Every key must equal the node's label; empty selects every node.
    #[serde(rename = "match")]
    pub selector: Labels,
    pub roles: Vec<String>,
    /// Line of each entry of `roles`, for error messages.
    #[serde(skip)]
    pub role_lines: Vec<usize>,
    pub vars: Vars,
    #[serde(default, skip_serializing_if = "Origin::is_unknown")]
    pub origin: Origin,
    /// This group's own rollout policy (`rollout:` in the group): it
    /// overrides the top-level one for the nodes the group reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::rollout::RolloutPolicy>,
    /// Where `rollout:` was given, for error messages.
    #[serde(skip)]
    pub rollout_origin: Origin,
}

/// Where something was declared: file and 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl Origin {
    pub fn is_unknown(&self) -> bool {
        self.file.is_empty()
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Present or absent, for kinds that have no richer states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ensure {
    #[default]
    Present,
    Absent,
}

/// One managed thing on a node. Identity is `kind[key]` (see [`Resource::id`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Resource {
    File(File),
    Directory(Directory),
    Symlink(Symlink),
    User(User),
    Group(Group),
    Package(Package),
    Cron(Cron),
    Sysctl(Sysctl),
    Service(Service),
}

/// The closed set of resource kinds, declared in apply order: groups before
/// users (a user's primary group must exist), users before packages (packages
/// may ship files owned by them), directories before files and symlinks (they
/// live inside), cron, kernel parameters and services last (they run what
/// the rest installed).
/// Removal runs in the reverse order (see [`Kind::REMOVE_ORDER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Group,
    User,
    Package,
    Directory,
    File,
    Symlink,
    Cron,
    Sysctl,
    Service,
}

impl Kind {
    /// Every kind, in apply order.
    pub const ORDER: [Kind; 9] = [
        Kind::Group,
        Kind::User,
        Kind::Package,
        Kind::Directory,
        Kind::File,
        Kind::Symlink,
        Kind::Cron,
        Kind::Sysctl,
        Kind::Service,
    ];

    /// Every kind, in removal order: the reverse of [`Kind::ORDER`], so a
    /// user goes before its primary group and a file before its directory.
    pub const REMOVE_ORDER: [Kind; 9] = [
        Kind::Service,
        Kind::Sysctl,
        Kind::Cron,
        Kind::Symlink,
        Kind::File,
        Kind::Directory,
        Kind::Package,
        Kind::User,
        Kind::Group,
    ];

    /// The name used in ids, `requires` and YAML (`file`, `user`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::User => "user",
            Kind::Package => "package",
            Kind::Directory => "directory",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Cron => "cron",
            Kind::Sysctl => "sysctl",
            Kind::Service => "service",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ORDER.into_iter().find(|k| k.as_str() == name)
    }

    /// Position in apply order.
    pub fn rank(self) -> usize {
        self as usize
    }

    /// Position in removal order.
    pub fn remove_rank(self) -> usize {
        Kind::ORDER.len() - 1 - self.rank()
    }

    /// Whether the key is a path (file, directory, symlink).
    pub fn is_path(self) -> bool {
        matches!(self, Kind::File | Kind::Directory | Kind::Symlink)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference to another resource, `kind:name` in YAML (`requires: [package:nginx]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceRef {
    pub kind: Kind,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct File {
    /// Absolute, normalised.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Render `content` with minijinja (facts, vars, node).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
    /// The contributing group's vars; set only on templates, by rendering.
    #[serde(default, skip_serializing_if = "Vars::is_empty")]
    pub vars: Vars,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Permission bits, parsed from an octal string ("0644").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default)]
    pub ensure: Ensure,
    /// Replace a symlink or an empty directory found at `path` (Debian ships
    /// `/etc/nginx/sites-enabled/default` as a symlink). Without it, anything
    /// but a regular file at `path` is refused; with it, a non-empty
    /// directory or a device is still refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
    /// Services restarted when this file changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<ResourceRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Directory {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default)]
    pub ensure: Ensure,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<ResourceRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Symlink {
    pub path: String,
    /// What the link points to; may be relative. Required when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default)]
    pub ensure: Ensure,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<ResourceRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Primary group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Supplementary groups (exactly these, when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system: bool,
    /// Written to `~/.ssh/authorized_keys` (exactly these, when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<Vec<String>>,
    /// With `ensure: absent`: delete the home directory (and mail spool)
    /// too. Default false: the home is kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_home: bool,
    #[serde(default)]
    pub ensure: Ensure,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<ResourceRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system: bool,
    #[serde(default)]
    pub ensure: Ensure,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<ResourceRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageEnsure {
    Present,
    Absent,
    Latest,
    /// An exact version string.
    Version(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub ensure: PackageEnsure,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<ResourceRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cron {
    /// Also the file name: `/etc/cron.d/ballast-NAME`.
    pub name: String,
    /// Five fields or `@hourly|@daily|@weekly|@monthly|@reboot`. Required when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default = "default_cron_user")]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub env: Labels,
    #[serde(default)]
    pub ensure: Ensure,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<ResourceRef>,
}

fn default_cron_user() -> String {
    "root".to_owned()
}

/// A kernel parameter (`net.ipv4.ip_forward`): persisted in
/// `/etc/sysctl.d/90-ballast.conf` and applied live. Removal deletes the
/// persisted entry and leaves the live value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sysctl {
    /// Dotted, as `sysctl` names it.
    pub key: String,
    /// Required when present; fields separated by single spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default)]
    pub ensure: Ensure,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<ResourceRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceEnsure {
    Running,
    Stopped,
    /// Stopped, disabled, and the unit file removed if the agent wrote it.
    Absent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensure: Option<ServiceEnsure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Content of `/etc/systemd/system/NAME.service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<ResourceRef>,
}

impl Resource {
    /// The kind, as in ids and `requires`.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::File(_) => Kind::File,
            Resource::Directory(_) => Kind::Directory,
            Resource::Symlink(_) => Kind::Symlink,
            Resource::User(_) => Kind::User,
            Resource::Group(_) => Kind::Group,
            Resource::Package(_) => Kind::Package,
            Resource::Cron(_) => Kind::Cron,
            Resource::Sysctl(_) => Kind::Sysctl,
            Resource::Service(_) => Kind::Service,
        }
    }

    /// The identifying key: a path for filesystem kinds, a name otherwise.
    pub fn key(&self) -> &str {
        match self {
            Resource::File(r) => &r.path,
            Resource::Directory(r) => &r.path,
            Resource::Symlink(r) => &r.path,
            Resource::User(r) => &r.name,
            Resource::Group(r) => &r.name,
            Resource::Package(r) => &r.name,
            Resource::Cron(r) => &r.name,
            Resource::Sysctl(r) => &r.key,
            Resource::Service(r) => &r.name,
        }
    }

    /// `kind[key]`, e.g. `file[/etc/motd]`.
    pub fn id(&self) -> String {
        format!("{}[{}]", self.kind(), self.key())
    }

    pub fn requires(&self) -> &[ResourceRef] {
        match self {
            Resource::File(r) => &r.requires,
            Resource::Directory(r) => &r.requires,
            Resource::Symlink(r) => &r.requires,
            Resource::User(r) => &r.requires,
            Resource::Group(r) => &r.requires,
            Resource::Package(r) => &r.requires,
            Resource::Cron(r) => &r.requires,
            Resource::Sysctl(r) => &r.requires,
            Resource::Service(r) => &r.requires,
        }
    }

    /// Position of this kind in apply order ([`Kind::ORDER`]).
    pub fn order(&self) -> usize {
        self.kind().rank()
    }

    /// Whether this resource asks for its thing to be gone (`ensure: absent`).
    pub fn is_absent(&self) -> bool {
        match self {
            Resource::File(r) => r.ensure == Ensure::Absent,
            Resource::Directory(r) => r.ensure == Ensure::Absent,
            Resource::Symlink(r) => r.ensure == Ensure::Absent,
            Resource::User(r) => r.ensure == Ensure::Absent,
            Resource::Group(r) => r.ensure == Ensure::Absent,
            Resource::Package(r) => r.ensure == PackageEnsure::Absent,
            Resource::Cron(r) => r.ensure == Ensure::Absent,
            Resource::Sysctl(r) => r.ensure == Ensure::Absent,
            Resource::Service(r) => r.ensure == Some(ServiceEnsure::Absent),
        }
    }

    /// The resource that removes the thing `kind[key]` names: the same kind
    /// with `ensure: absent` (a user keeps its home; a service is stopped
    /// and disabled).
    pub fn absent(kind: Kind, key: &str) -> Resource {
        let key = key.to_owned();
        match kind {
            Kind::File => Resource::File(File {
                path: key,
                content: None,
                template: false,
                vars: Vars::new(),
                owner: None,
                group: None,
                mode: None,
                ensure: Ensure::Absent,
                replace: false,
                notify: Vec::new(),
                requires: Vec::new(),
            }),
            Kind::Directory => Resource::Directory(Directory {
                path: key,
                owner: None,
                group: None,
                mode: None,
                ensure: Ensure::Absent,
                requires: Vec::new(),
            }),
            Kind::Symlink => Resource::Symlink(Symlink {
                path: key,
                target: None,
                ensure: Ensure::Absent,
                requires: Vec::new(),
            }),
            Kind::User => Resource::User(User {
                name: key,
                uid: None,
                group: None,
                groups: None,
                home: None,
                shell: None,
                system: false,
                authorized_keys: None,
                remove_home: false,
                ensure: Ensure::Absent,
                requires: Vec::new(),
            }),
            Kind::Group => Resource::Group(Group {
                name: key,
                gid: None,
                system: false,
                ensure: Ensure::Absent,
                requires: Vec::new(),
            }),
            Kind::Package => Resource::Package(Package {
                name: key,
                ensure: PackageEnsure::Absent,
                notify: Vec::new(),
                requires: Vec::new(),
            }),
            Kind::Cron => Resource::Cron(Cron {
                name: key,
                schedule: None,
                user: default_cron_user(),
                command: None,
                env: Labels::new(),
                ensure: Ensure::Absent,
                requires: Vec::new(),
            }),
            Kind::Sysctl => Resource::Sysctl(Sysctl {
                key,
                value: None,
                ensure: Ensure::Absent,
                requires: Vec::new(),
            }),
            Kind::Service => Resource::Service(Service {
                name: key,
                ensure: Some(ServiceEnsure::Absent),
                enabled: None,
                unit: None,
                requires: Vec::new(),
            }),
        }
    }

    /// Services this resource asks to restart when it changes.
    pub fn notify(&self) -> &[String] {
        match self {
            Resource::File(r) => &r.notify,
            Resource::Package(r) => &r.notify,
            _ => &[],
        }
    }
}

/// Name and labels of a node, as rendering and templates see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeMeta {
    pub name: String,
    pub labels: Labels,
}

/// One node's rendered desired state: what the controller sends and the agent
/// enforces. Resources are sorted by (kind order, key) and unique by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeState {
    pub node: NodeMeta,
    pub resources: Vec<Resource>,
}
