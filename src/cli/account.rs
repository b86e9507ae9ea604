//! `pacsd account` (alias `pacsd user`): the HTTP side's accounts, on the index.

use std::path::PathBuf;
use std::process::ExitCode;

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
    let open = |c: &Option<PathBuf>| -> anyhow::Result<pacsd::index::Index> {
        let config = load_config(c.as_ref())?;
        Ok(pacsd::index::Index::open(&config.index.path)?)
    };
    match command {
        AccountCommand::Add {
            config,
            name,
            rights,
        } => {
            validate_name(&name)?;
            let rights = Rights::parse(&rights)?;
            let password = read_password()?;
            open(&config)?.add_account(&name, &password, rights).await?;
            println!("account {name} ({}) added", rights.to_text());
        }
        AccountCommand::List { config } => {
            for (a, tokens) in open(&config)?.accounts().await? {
                println!("{:<24} {:<16} {tokens} tokens", a.name, a.rights.to_text());
            }
        }
        AccountCommand::Remove { config, name } => {
            if !open(&config)?.remove_account(&name).await? {
                anyhow::bail!("no account {name}");
            }
            println!("account {name} removed");
        }
        AccountCommand::Password { config, name } => {
            let password = read_password()?;
            if !open(&config)?.set_password(&name, &password).await? {
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
            let index = open(&config)?;
            if index.account_secret(&name).await?.is_none() {
                anyhow::bail!("no account {name}");
            }
            println!("{}", index.issue_token(&name, &label).await?);
        }
        AccountCommand::Revoke {
            config,
            name,
            label,
        } => {
            let n = open(&config)?.revoke_tokens(&name, &label).await?;
            println!("{n} tokens revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
