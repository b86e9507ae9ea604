//! `pacsd ha status|switchover|stop|maintenance`: over the node's control socket.

use std::process::ExitCode;

use anyhow::Context;

use super::*;

/// Run one `pacsd ha` command.
pub async fn run(command: HaCommand) -> anyhow::Result<ExitCode> {
    use pacsd::ha::driver::{
        ControlReply, ControlRequest, control, control_path, maintenance_path, set_maintenance,
    };
    let (config, req, json) = match command {
        HaCommand::Status { config, json } => (config, ControlRequest::Status, json),
        HaCommand::Switchover { config } => (config, ControlRequest::Switchover, false),
        HaCommand::Stop { config } => (config, ControlRequest::Stop, false),
        HaCommand::Maintenance { state, config } => (
            config,
            ControlRequest::Maintenance {
                on: matches!(state, OnOff::On),
            },
            false,
        ),
    };
    let config = load_config(config.as_ref())?;
    let ha = config
        .ha
        .as_ref()
        .context("this configuration has no [ha] section")?;
    let socket = control_path(&config, ha);
    let reply = match (control(&socket, &req).await, &req) {
        (Ok(r), _) => r,
        (Err(e), ControlRequest::Maintenance { on }) if e.not_running() => {
            // Not running: recorded now, in effect when it starts.
            let path = maintenance_path(&config);
            set_maintenance(&path, *on)
                .with_context(|| format!("recording maintenance in {}", path.display()))?;
            tracing::debug!(error = %e, "node not reachable");
            ControlReply::Ok(format!(
                "the node is not running: maintenance {} recorded in {}; it applies when the node starts",
                if *on { "on" } else { "off" },
                path.display()
            ))
        }
        (Err(e), _) => return Err(e.into()),
    };
    if let (ControlRequest::Stop, ControlReply::Ok(m)) = (&req, &reply) {
        // The node removes its control socket as it exits.
        println!("{m}");
        let deadline = std::time::Instant::now()
            + config.timeouts.shutdown() * 3
            + pacsd::ha::role::Timing::of(ha).dead_after() * 2;
        while std::fs::exists(&socket).unwrap_or(false) {
            if std::time::Instant::now() > deadline {
                eprintln!("pacsd: the node has not stopped yet");
                return Ok(ExitCode::from(1));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        println!("stopped");
        return Ok(ExitCode::SUCCESS);
    }
    match reply {
        ControlReply::Status(s) if json => {
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        ControlReply::Status(s) => {
            println!("node {}: {} in epoch {}", s.node, s.role, s.epoch);
            if s.maintenance {
                println!("in maintenance: will not become primary");
            }
            if let Some(p) = &s.planned {
                println!("planned {p} under way: draining associations, then handing over");
            }
            if s.standby_ready == Some(false) {
                println!("no standby ready to take over");
            }
            if let Some(l) = s.lease_ms {
                println!("lease: {l} ms left");
            }
            match &s.peer {
                Some(p) => println!(
                    "peer {}: {} in epoch {}, last heard {} ms ago, index seq {}",
                    p.node,
                    if p.primary { "primary" } else { "standby" },
                    p.epoch,
                    p.heard_ms_ago,
                    p.seq
                ),
                None => println!("peer: never heard"),
            }
            if let Some(p) = s.peer.as_ref().filter(|p| p.maintenance) {
                println!("peer {} is in maintenance", p.node);
            }
            println!(
                "index seq {}, replication lag {}",
                s.seq,
                s.replication_lag
                    .map_or("unknown".to_string(), |l| l.to_string())
            );
            if let Some(ip) = &s.service_ip {
                println!(
                    "service IP {ip}: {}",
                    if s.holds_service_ip {
                        "held here"
                    } else {
                        "not held here"
                    }
                );
            }
        }
        ControlReply::Ok(m) => println!("{m}"),
        ControlReply::Changed(n) => println!("{n} rows changed"),
        ControlReply::Error(e) => {
            eprintln!("pacsd: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}
