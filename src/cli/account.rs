//! `pacsd account` (alias `pacsd user`): the HTTP side's accounts, on the index.
//!
//! A node that runs alone changes its index file directly (a running node sees the change at
//! once). A member of an HA pair changes accounts only through its running primary, which
//! logs the change and replicates it to the standby like an instance: a change written
//! straight into one member's file would be missing on the other after a takeover (an account
//! that no longer signs in, or a removed one that still does).

use std::process::ExitCode;

use anyhow::Context;
use pacsd::config::Config;
use pacsd::index::account::AccountChange;

use super::*;

/// `pacsd account ...`: on the index named by the configuration.
pub async fn run(command: AccountCommand) -> anyhow::Result<ExitCode> {
    use pacsd::index::account::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, Rights, validate_name};
    let read_password = || -> anyhow::Result<String> {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let pw = line.trim_end_matches(['\r', '\n']).to_string();
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&pw.chars().count()) {
            anyhow::bail!("a password has {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters");
        }
        Ok(pw)
    };
    match command {
        AccountCommand::Add {
            config,
            name,
            rights,
        } => {
            validate_name(&name)?;
            let rights = Rights::parse(&rights)?;
            let change = AccountChange::add(&name, &read_password()?, rights)?;
            if change_account(&load_config(config.as_ref())?, change).await? == 0 {
                anyhow::bail!("account {name} was not added");
            }
            println!("account {name} ({}) added", rights.to_text());
        }
        AccountCommand::List { config } => {
            let config = load_config(config.as_ref())?;
            for (a, tokens) in pacsd::index::Index::open(&config.index.path)?
                .accounts()
                .await?
            {
                println!("{:<24} {:<16} {tokens} tokens", a.name, a.rights.to_text());
            }
        }
        AccountCommand::Remove { config, name } => {
            let change = AccountChange::Remove { name: name.clone() };
            if change_account(&load_config(config.as_ref())?, change).await? == 0 {
                anyhow::bail!("no account {name}");
            }
            println!("account {name} removed");
        }
        AccountCommand::Password { config, name } => {
            let change = AccountChange::password(&name, &read_password()?)?;
            if change_account(&load_config(config.as_ref())?, change).await? == 0 {
                anyhow::bail!("no account {name}");
            }
            println!(
                "password of {name} changed (a running node accepts the old one for up to a minute)"
            );
        }
        AccountCommand::Token {
            config,
            name,
            label,
        } => {
            let (change, token) = AccountChange::token(&name, &label);
            if change_account(&load_config(config.as_ref())?, change).await? == 0 {
                anyhow::bail!("no account {name}");
            }
            println!("{token}");
        }
        AccountCommand::Revoke {
            config,
            name,
            label,
        } => {
            let change = AccountChange::Revoke {
                account: name,
                label,
            };
            let n = change_account(&load_config(config.as_ref())?, change).await?;
            println!("{n} tokens revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Apply `change` where it belongs (module comment); the rows it changed.
async fn change_account(config: &Config, change: AccountChange) -> anyhow::Result<u64> {
    use pacsd::ha::driver::{ControlReply, ControlRequest, control, control_path};
    let Some(ha) = &config.ha else {
        let index = pacsd::index::Index::open(&config.index.path)?;
        return Ok(index.change_account(change).await?.rows);
    };
    let socket = control_path(config, ha);
    let reply = control(&socket, &ControlRequest::Account { change })
        .await
        .with_context(|| {
            "this node is a member of an HA pair: its accounts change only through the running \
             primary (run this on the primary while it serves)"
        })?;
    match reply {
        ControlReply::Changed(n) => Ok(n),
        ControlReply::Error(e) => anyhow::bail!("{e}"),
        other => anyhow::bail!("unexpected answer from the node: {other:?}"),
    }
}
