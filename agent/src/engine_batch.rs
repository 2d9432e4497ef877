//! The engine's two batches: packages in one apt transaction, and files
//! observed and staged on a few threads, then committed together. Batching
//! is how their [`Resource`] implementation is called, not a way around it:
//! each goes through [`plan`] as a lone resource would.

use super::{Context, Resource, ResourceReport, plan};
use crate::host::Host;
use ballast_proto::spec::{Ensure, Resource as Spec};
use std::collections::{BTreeMap, BTreeSet};

/// Plans every package through its [`Resource`] implementation, then
/// applies all their changes (installs, upgrades and removals alike) in one
/// apt transaction: batching is how their `apply` is called. Each package is
/// then judged by observing it again, not by apt's exit code alone.
pub(super) fn run_packages(
    specs: &[&ballast_proto::spec::Package],
    host: &Host,
    facts: &serde_json::Value,
    noop: bool,
) -> Vec<ResourceReport> {
    use crate::package::{self, PackageRes};
    let resources: Vec<PackageRes> = specs
        .iter()
        .map(|spec| PackageRes { spec, facts })
        .collect();
    let mut reports = Vec::with_capacity(resources.len());
    let mut batch = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        let (report, todo) = plan(r, host);
        if let Some((_, changes)) = todo {
            batch.push((i, changes));
        }
        reports.push(report);
    }
    if noop || batch.is_empty() {
        return reports;
    }
    let transaction: Vec<_> = batch
        .iter()
        .map(|(i, changes)| (resources[*i].spec, changes.clone()))
        .collect();
    let result = package::apply_batch(host, &transaction);
    for (i, _) in &batch {
        let (r, report) = (&resources[*i], &mut reports[*i]);
        match (&result, r.observe(host).map(|a| r.diff(&a).is_empty())) {
            (_, Ok(true)) => report.applied(),
            (Err(e), _) => report.fail(e),
            (Ok(()), Err(e)) => report.fail(&e),
            (Ok(()), Ok(false)) => report.fail(&anyhow::anyhow!(
                "apt finished but the package is still not as desired"
            )),
        }
    }
    reports
}

/// Runs every file that requires nothing and is not below a failed directory.
/// Observing, diffing and staging new content run on a few threads; then all
/// staged files are made durable at once and renamed into place (see
/// [`Host::commit_all`]): the same guarantee as one fsync per file, paid once.
pub(super) fn run_files(
    resources: &[&Spec],
    host: &Host,
    cx: &Context<'_>,
    noop: bool,
    broken: &BTreeSet<String>,
    ready: &dyn Fn(usize) -> bool,
) -> BTreeMap<String, ResourceReport> {
    let below_broken = |key: &str| {
        broken.iter().any(|b| {
            b.strip_prefix("directory[")
                .and_then(|p| p.strip_suffix(']'))
                .is_some_and(|dir| key.starts_with(&format!("{dir}/")))
        })
    };
    let files: Vec<&ballast_proto::spec::File> = resources
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Spec::File(f)
                if f.requires.is_empty()
                    && f.ensure == Ensure::Present
                    && !below_broken(&f.path)
                    && ready(i) =>
            {
                Some(f)
            }
            _ => None,
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = files.len().div_ceil(64).clamp(1, 8);
    let results: Vec<(ResourceReport, Option<crate::host::Staged>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(spec) = files.get(i) else { break };
                        out.push((i, stage_file(spec, host, cx, noop)));
                    }
                    out
                })
            })
            .collect();
        let mut all: Vec<(usize, (ResourceReport, Option<crate::host::Staged>))> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("file worker panicked"))
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, r)| r).collect()
    });
    tracing::debug!(files = files.len(), "files observed and staged");
    let (mut reports, staged): (Vec<ResourceReport>, Vec<Option<crate::host::Staged>>) =
        results.into_iter().unzip();
    let pending: Vec<(usize, crate::host::Staged)> = staged
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, s)))
        .collect();
    let (idx, staged): (Vec<usize>, Vec<crate::host::Staged>) = pending.into_iter().unzip();
    for (i, result) in idx.into_iter().zip(host.commit_all(staged)) {
        let r = &mut reports[i];
        match result {
            Ok(()) => r.applied(),
            Err(e) => r.fail(&e),
        }
    }
    reports.into_iter().map(|r| (r.id.clone(), r)).collect()
}

/// Observe, diff and apply one file, staging new content instead of committing it.
fn stage_file(
    spec: &ballast_proto::spec::File,
    host: &Host,
    cx: &Context<'_>,
    noop: bool,
) -> (ResourceReport, Option<crate::host::Staged>) {
    let res = match crate::file::FileRes::new(spec, cx) {
        Ok(r) => r,
        Err(e) => {
            return (
                ResourceReport::failed(format!("file[{}]", spec.path), &e),
                None,
            );
        }
    };
    let (mut report, todo) = plan(&res, host);
    let Some((actual, changes)) = todo.filter(|_| !noop) else {
        return (report, None);
    };
    match res.apply_staged(host, &actual, &changes) {
        Ok((backup, staged)) => {
            report.backup = backup;
            (report, staged)
        }
        Err(e) => {
            report.fail(&e);
            (report, None)
        }
    }
}
