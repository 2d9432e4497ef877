//! Run reports the controller has not acknowledged yet, kept in the state dir
//! (`outbox/NNNNNNNNNNNNNNNNNNNN.report`, protobuf) so that what the agent saw
//! while the controller was away reaches it, in order, once it is back, even
//! across agent restarts.
//!
//! Invariants: reports leave in the order they were made; one is removed only
//! once the controller acknowledged it (or refused it as invalid); the queue
//! is bounded by count and bytes, and overflow drops the oldest.

use crate::state::{StateDir, create_private_dir, write_atomic};
use anyhow::Context;
use ballast_proto::pb;
use prost::Message;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;

/// Reports kept at most; the oldest go first.
pub const MAX_UNSENT_REPORTS: usize = 64;
/// Bytes of reports kept at most (the newest report is always kept).
pub const MAX_UNSENT_BYTES: u64 = 16 << 20;
const SUFFIX: &str = ".report";

#[derive(Debug, Clone, Copy)]
struct Queued {
    seq: u64,
    bytes: u64,
    /// Nothing changed or failed: a later quiet run of the same state says the same.
    quiet: bool,
    revision: u64,
}

/// The on-disk queue of unsent reports.
pub struct Outbox {
    dir: PathBuf,
    queue: Mutex<VecDeque<Queued>>,
}

fn is_quiet(report: &pb::RunReport) -> bool {
    !report.noop
        && report.resources.iter().all(|r| {
            r.outcome == pb::Outcome::Unchanged as i32 && r.changes.is_empty() && r.error.is_empty()
        })
}

impl Outbox {
    /// Opens (or creates) the queue in the state dir, dropping anything that is
    /// not a queued report (temp files of an interrupted write).
    pub fn open(state: &StateDir) -> anyhow::Result<Outbox> {
        let dir = state.outbox();
        create_private_dir(&dir)?;
        let mut queue = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry.with_context(|| format!("read {}", dir.display()))?;
            let name = entry.file_name();
            let seq = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok());
            let Some(seq) = seq else {
                let _ = std::fs::remove_file(entry.path());
                continue;
            };
            let bytes = std::fs::read(entry.path())
                .with_context(|| format!("read {}", entry.path().display()))?;
            match pb::RunReport::decode(bytes.as_slice()) {
                Ok(report) => queue.push(Queued {
                    seq,
                    bytes: bytes.len() as u64,
                    quiet: is_quiet(&report),
                    revision: report.revision,
                }),
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "dropping an unreadable queued report");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        queue.sort_by_key(|q| q.seq);
        let outbox = Outbox {
            dir,
            queue: Mutex::new(queue.into()),
        };
        outbox.prune(&mut outbox.lock());
        Ok(outbox)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    /// Queues a report durably, fitted first to the bounds the controller
    /// enforces (`limits::fit_report`: visible truncation marks), so that no
    /// queued report is ever refused. A quiet run right after a quiet run of
    /// the same revision replaces it: it tells the controller nothing more.
    pub fn push(&self, report: &pb::RunReport) -> anyhow::Result<()> {
        let mut fitted = report.clone();
        ballast_proto::limits::fit_report(&mut fitted);
        let report = &fitted;
        let bytes = report.encode_to_vec();
        let mut queue = self.lock();
        let seq = queue.back().map(|q| q.seq + 1).unwrap_or(1);
        let quiet = is_quiet(report);
        write_atomic(&self.path(seq), &bytes, 0o600)?;
        if quiet
            && let Some(last) = queue.back().copied()
            && last.quiet
            && last.revision == report.revision
        {
            queue.pop_back();
            let _ = std::fs::remove_file(self.path(last.seq));
        }
        queue.push_back(Queued {
            seq,
            bytes: bytes.len() as u64,
            quiet,
            revision: report.revision,
        });
        self.prune(&mut queue);
        Ok(())
    }

    fn prune(&self, queue: &mut VecDeque<Queued>) {
        let mut total: u64 = queue.iter().map(|q| q.bytes).sum();
        let mut dropped = 0;
        while queue.len() > MAX_UNSENT_REPORTS || (total > MAX_UNSENT_BYTES && queue.len() > 1) {
            let Some(old) = queue.pop_front() else { break };
            total -= old.bytes;
            dropped += 1;
            let _ = std::fs::remove_file(self.path(old.seq));
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                kept = queue.len(),
                "unsent report queue full; dropped the oldest reports"
            );
        }
    }

    /// The oldest queued report, with its sequence number for [`Outbox::remove`].
    pub fn front(&self) -> anyhow::Result<Option<(u64, pb::RunReport)>> {
        loop {
            let Some(first) = self.lock().front().copied() else {
                return Ok(None);
            };
            let path = self.path(first.seq);
            let decoded = std::fs::read(&path)
                .with_context(|| format!("read {}", path.display()))
                .and_then(|b| {
                    pb::RunReport::decode(b.as_slice())
                        .with_context(|| format!("decode {}", path.display()))
                });
            match decoded {
                Ok(report) => return Ok(Some((first.seq, report))),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "dropping an unreadable queued report");
                    self.remove(first.seq);
                }
            }
        }
    }

    /// Forgets a delivered report.
    pub fn remove(&self, seq: u64) {
        let mut queue = self.lock();
        if let Some(i) = queue.iter().position(|q| q.seq == seq) {
            queue.remove(i);
        }
        let _ = std::fs::remove_file(self.path(seq));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report told apart from others by `tag` (its start time).
    fn report(revision: u64, tag: u64, changed: bool) -> pb::RunReport {
        pb::RunReport {
            revision,
            started_at_ms: tag,
            trigger: ballast_proto::enums::Trigger::Resync.into(),
            resources: vec![pb::ResourceOutcome {
                id: "file[/x]".into(),
                outcome: if changed {
                    pb::Outcome::Changed
                } else {
                    pb::Outcome::Unchanged
                } as i32,
                changes: if changed {
                    vec!["content".into()]
                } else {
                    vec![]
                },
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn drain(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((seq, r)) = outbox.front().unwrap() {
            out.push(format!("{}:{}", r.revision, r.started_at_ms));
            outbox.remove(seq);
        }
        out
    }

    #[test]
    fn unsent_reports_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Outbox::open(&StateDir::new(dir.path())).unwrap();
            o.push(&report(1, 1, true)).unwrap();
            o.push(&report(1, 2, false)).unwrap();
            o.push(&report(1, 3, false)).unwrap(); // replaces 2: says nothing new
            o.push(&report(2, 4, true)).unwrap();
        }
        std::fs::write(dir.path().join("outbox/.x.tmp"), b"partial").unwrap();
        let o = Outbox::open(&StateDir::new(dir.path())).unwrap();
        assert_eq!(drain(&o), ["1:1", "1:3", "2:4"]);
        let o = Outbox::open(&StateDir::new(dir.path())).unwrap();
        assert!(o.is_empty(), "delivered reports are gone for good");
        assert_eq!(
            std::fs::read_dir(dir.path().join("outbox"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn unsent_reports_are_bounded_dropping_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(&StateDir::new(dir.path())).unwrap();
        for i in 0..(MAX_UNSENT_REPORTS as u64 + 10) {
            o.push(&report(i, i, true)).unwrap();
        }
        assert_eq!(o.len(), MAX_UNSENT_REPORTS);
        assert_eq!(o.front().unwrap().unwrap().1.revision, 10);
        // Near the controller's report bound (3 MiB), so fitting leaves it whole.
        let big = pb::RunReport {
            resources: (0..180)
                .map(|i| pb::ResourceOutcome {
                    id: format!("file[/big/{i}]"),
                    outcome: pb::Outcome::Failed as i32,
                    error: "e".repeat(16_000),
                    ..Default::default()
                })
                .collect(),
            ..report(999, 999, true)
        };
        for _ in 0..8 {
            o.push(&big).unwrap();
        }
        assert!(o.len() < 8, "byte cap holds: {} kept", o.len());
        let kept: u64 = std::fs::read_dir(dir.path().join("outbox"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(kept <= MAX_UNSENT_BYTES + 1024, "{kept} bytes on disk");
    }

    #[test]
    fn queued_reports_fit_the_controllers_bounds() {
        use ballast_proto::limits;
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(&StateDir::new(dir.path())).unwrap();
        let mut hostile = report(1, 1, true);
        hostile.resources[0].id = format!("file[/{}]", "x".repeat(4 << 20));
        hostile.resources[0].error = "e".repeat(1 << 20);
        o.push(&hostile).unwrap();
        let (_, queued) = o.front().unwrap().unwrap();
        let res = &queued.resources[0];
        assert!(res.id.len() <= limits::MAX_RESOURCE_ID_BYTES);
        assert!(res.error.len() <= limits::MAX_ERROR_BYTES);
        assert!(
            res.id.contains("truncated"),
            "the cut is visible: {}",
            &res.id[res.id.len() - 40..]
        );
        limits::CheckedReport::try_from(queued.clone())
            .expect("the controller accepts what the agent queued");
    }
}
