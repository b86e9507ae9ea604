//! `pacsd serve` (the node, alone or as a pair member) and `pacsd witness`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use pacsd::node::Node;

use super::*;

/// `pacsd serve`: run until a signal, then stop in order (a pair member hands over first).
pub async fn serve(
    config: Option<PathBuf>,
    port: Option<u16>,
    http_port: Option<u16>,
) -> anyhow::Result<ExitCode> {
    let mut config = load_config(config.as_ref())?;
    if let Some(p) = port {
        config.node.port = p;
    }
    if let Some(p) = http_port {
        config.http.port = p;
    }
    let deadline = config.timeouts.shutdown();
    let pair = config.ha.is_some();
    let (trigger, shutdown) = pacsd::net::ShutdownTrigger::new();
    let mut node = tokio::spawn(Node::open(config)?.serve(shutdown));
    tokio::select! {
        r = &mut node => return Ok(r??).map(|()| ExitCode::SUCCESS),
        _ = wait_for_signal() => {}
    }
    if pair {
        tracing::info!("signal received: stepping down, then stopping");
    } else {
        tracing::info!("signal received: finishing in-flight messages, then stopping");
    }
    trigger.trigger();
    match tokio::time::timeout(deadline + Duration::from_secs(5), node).await {
        Ok(r) => r??,
        Err(_) => anyhow::bail!("shutdown did not finish within {deadline:?}"),
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `pacsd witness`: the arbiter of a two-node site.
pub async fn witness(
    listen: String,
    dir: PathBuf,
    nodes: Vec<String>,
    key_file: PathBuf,
) -> anyhow::Result<ExitCode> {
    let key = pacsd::ha::driver::read_key(&key_file)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let (trigger, shutdown) = pacsd::net::ShutdownTrigger::new();
    let task = tokio::spawn(async move {
        pacsd::ha::arbiter::run_witness(listener, &dir, &nodes, key, shutdown).await
    });
    wait_for_signal().await;
    trigger.trigger();
    task.await??;
    Ok(ExitCode::SUCCESS)
}
