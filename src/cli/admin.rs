//! Administration: `pacsd preview`, `storage verify|repair|bench`, `synth`, `index
//! rebuild|fill-synthetic|stats`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use pacsd::node::Node;

use super::*;

/// `pacsd preview`.
pub async fn preview(
    config: Option<PathBuf>,
    sop_instance_uid: Option<String>,
    study: Option<String>,
    out: PathBuf,
) -> anyhow::Result<ExitCode> {
    let node = Node::open(load_config(config.as_ref())?)?;
    let (jpeg, what) = match (sop_instance_uid, study) {
        (_, Some(study)) => {
            let (jpeg, n) =
                pacsd::render::fetch::contact_sheet(&node.index, &node.storage, &study).await?;
            (
                jpeg,
                format!("contact sheet of {n} series of study {study}"),
            )
        }
        (Some(sop), None) => (
            pacsd::render::fetch::preview_of(&node.index, &node.storage, &sop).await?,
            format!("preview of {sop}"),
        ),
        (None, None) => unreachable!("clap requires one of them"),
    };
    std::fs::write(&out, &jpeg).with_context(|| format!("writing {}", out.display()))?;
    println!("{what}: {} ({} bytes)", out.display(), jpeg.len());
    Ok(ExitCode::SUCCESS)
}

/// `pacsd storage verify|repair`.
pub async fn storage(command: StorageCommand) -> anyhow::Result<ExitCode> {
    let (config, verify) = match command {
        StorageCommand::Verify { config } => (config, true),
        StorageCommand::Repair { config } => (config, false),
        StorageCommand::Bench { .. } => unreachable!("handled above"),
    };
    let node = Node::open(load_config(config.as_ref())?)?;
    if verify {
        let s = pacsd::archive::maintenance::verify_all(&node.index, &node.storage, true).await?;
        println!(
            "{} objects and {} previews checked on {} replicas: {} bad copies (queued for repair)",
            s.objects,
            s.previews,
            node.storage.replicas().len(),
            s.bad_copies
        );
        Ok(if s.bad_copies == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    } else {
        let s = pacsd::archive::maintenance::repair_pass(&node.index, &node.storage).await?;
        let left = node.index.counts().await?.repair_queue;
        println!(
            "{} repaired, {} failed, {} dropped; {left} left in the repair queue",
            s.repaired, s.failed, s.dropped
        );
        Ok(if left == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

/// `pacsd storage bench`: build the replica set, run the benchmark, print one table.
pub async fn storage_bench(
    urls: Vec<String>,
    mut mbps: Vec<f64>,
    sizes_mb: Vec<f64>,
    rounds: usize,
) -> anyhow::Result<ExitCode> {
    use pacsd::storage::{Location, Storage, bench};
    let tmp;
    let urls = if urls.is_empty() {
        tmp = tempfile::tempdir().context("making a temporary directory")?;
        if mbps.is_empty() {
            mbps = vec![20.0, 40.0, 80.0];
        }
        (0..mbps.len())
            .map(|i| tmp.path().join(format!("r{i}")).display().to_string())
            .collect()
    } else {
        urls
    };
    anyhow::ensure!(
        mbps.is_empty() || mbps.len() == urls.len(),
        "--mbps gives {} speeds for {} replicas",
        mbps.len(),
        urls.len()
    );
    anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
    let mut stores = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let store = Location::parse(url)
            .and_then(|l| l.open())
            .map_err(|e| anyhow::anyhow!("replica {url}: {e}"))?;
        let store = match mbps.get(i) {
            Some(&m) => bench::throttled(store, m),
            None => store,
        };
        let name = match mbps.get(i) {
            Some(m) => format!("replica {} ({m} MB/s)", i + 1),
            None => format!("replica {}", i + 1),
        };
        stores.push((name, store));
    }
    let storage = Storage::from_stores(stores.clone(), None, "bench")?;
    let sizes: Vec<u64> = sizes_mb.iter().map(|m| (m * 1e6) as u64).collect();
    let rows = bench::run(&storage, &stores, &sizes, rounds).await?;
    let names: Vec<&str> = stores.iter().map(|(n, _)| n.as_str()).collect();
    println!("replicas: {}; {rounds} rounds, medians", names.join(", "));
    println!(
        "{:>8} {:>22} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8} {:>10}  adaptive bytes per replica",
        "size MB",
        "alone MB/s",
        "(a) single",
        "(a)+digest",
        "(b) equal",
        "(c) adaptive",
        "c/sum",
        "c/a",
        "c/(a+dig)"
    );
    for r in &rows {
        let solo: Vec<String> = r.solo.iter().map(|b| format!("{:.1}", b / 1e6)).collect();
        println!(
            "{:>8.1} {:>22} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>7.0}% {:>8.2} {:>10.2}  {:?}",
            r.size as f64 / 1e6,
            solo.join("/"),
            r.mbps(r.single_fastest),
            r.mbps(r.single_checked),
            r.mbps(r.equal_split),
            r.mbps(r.adaptive),
            100.0 * r.mbps(r.adaptive) * 1e6 / r.summed_bandwidth(),
            r.single_fastest / r.adaptive,
            r.single_checked / r.adaptive,
            r.adaptive_bytes_from
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `pacsd synth`.
pub fn synth(
    out: PathBuf,
    studies: u32,
    series: u32,
    per_study: u32,
    size: u16,
    first_study: u32,
) -> anyhow::Result<ExitCode> {
    let n = pacsd::synth::write_corpus(&out, first_study, studies, series, per_study, size)?;
    println!("wrote {n} instances under {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `pacsd index rebuild`.
pub async fn index_rebuild(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load_config(config.as_ref())?;
    let s = pacsd::archive::maintenance::rebuild_index(&config, true)
        .await
        .context("rebuilding the index")?;
    println!(
        "{} objects in storage: {} indexed, {} skipped (see log)",
        s.objects, s.indexed, s.skipped
    );
    Ok(if s.skipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `pacsd index fill-synthetic`.
pub async fn index_fill(
    config: Option<PathBuf>,
    studies: u32,
    series: u32,
    instances: u32,
    first_study: u32,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config.as_ref())?;
    let total = u64::from(studies) * u64::from(series) * u64::from(instances);
    let bar = pacsd::tools::progress_bar(true, total);
    let records = (first_study..first_study + studies).flat_map(move |st| {
        (1..=series).flat_map(move |se| {
            (1..=instances)
                .map(move |n| pacsd::synth::record(&pacsd::synth::corpus_spec(st, se, n, 0)))
        })
    });
    let path = config.index.path.clone();
    let n = tokio::task::spawn_blocking(move || {
        pacsd::index::bulk_load(&path, records, 10_000, |n| bar.set_position(n))
    })
    .await??;
    println!("{n} instances added to {}", config.index.path.display());
    Ok(ExitCode::SUCCESS)
}

/// `pacsd index stats`.
pub async fn index_stats(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load_config(config.as_ref())?;
    let index = pacsd::index::Index::open(&config.index.path)?;
    let c = index.counts().await?;
    let p = index.preview_counts().await?;
    println!(
        "patients {}\nstudies {}\nseries {}\ninstances {}\nchangelog {}\nrepair_queue {}\n\
             previews_done {}\npreviews_pending {}\npreviews_none {}\npreviews_failed {}",
        c.patients,
        c.studies,
        c.series,
        c.instances,
        c.changelog,
        c.repair_queue,
        p.done,
        p.pending,
        p.none,
        p.failed
    );
    Ok(ExitCode::SUCCESS)
}
