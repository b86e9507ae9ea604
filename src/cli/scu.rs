//! The SCU tools: `pacsd echo`, `store`, `find`, `find-latency`, `move`, `get`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::*;

/// `pacsd echo`.
pub async fn echo(remote: Remote) -> anyhow::Result<ExitCode> {
    let (code, rtt) = pacsd::tools::echo(&remote.options()).await?;
    println!(
        "C-ECHO {}:{} ({}): status {code:04X} in {:.1} ms",
        remote.host,
        remote.port,
        remote.called,
        rtt.as_secs_f64() * 1e3
    );
    Ok(if code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `pacsd store`.
pub async fn store(
    remote: Remote,
    jobs: usize,
    no_progress: bool,
    paths: Vec<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let files = pacsd::tools::collect_files(&paths)?;
    let s = pacsd::tools::store(&remote.options(), files, jobs, !no_progress).await?;
    for (path, why) in &s.failures {
        eprintln!("failed: {}: {why}", path.display());
    }
    println!(
        "{} stored ({} with warnings), {} failed, {:.1} MB in {:.2} s: {:.1} instances/s, {:.1} MB/s",
        s.succeeded,
        s.warnings,
        s.failed,
        s.bytes as f64 / 1e6,
        s.elapsed.as_secs_f64(),
        s.per_second(),
        s.mb_per_second()
    );
    Ok(if s.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `pacsd find`.
pub async fn find(
    remote: Remote,
    model: ModelArg,
    level: String,
    keys: Vec<String>,
    charset: Option<String>,
    relational: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let spec = pacsd::tools::FindSpec {
        model: model.into(),
        level,
        keys,
        charset,
        relational,
        cancel_after: None,
    };
    let r = pacsd::tools::find(&remote.options(), &spec).await?;
    if json {
        println!("{}", r.to_json());
    } else {
        println!("{}", r.to_table());
    }
    eprintln!(
        "{} match(es); final status {:04X}{}",
        r.matches.len(),
        r.status.code,
        r.status
            .comment
            .as_ref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default()
    );
    Ok(if r.status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `pacsd find-latency`.
pub async fn find_latency(
    remote: Remote,
    model: ModelArg,
    rounds: usize,
    queries: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let mut parsed = Vec::new();
    for q in &queries {
        let mut parts = q.splitn(3, '|');
        let (Some(label), Some(level), keys) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("--query `{q}` is not LABEL|LEVEL|Key=value;...");
        };
        let keys = keys
            .unwrap_or("")
            .split(';')
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect();
        let spec = pacsd::tools::FindSpec {
            model: model.into(),
            level: level.to_string(),
            keys,
            charset: None,
            relational: false,
            cancel_after: None,
        };
        parsed.push((label.to_string(), spec));
    }
    let reports =
        pacsd::tools::find_latency(&remote.options(), model.into(), &parsed, rounds).await?;
    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>10} {:>7}",
        "query", "matches", "p50 ms", "p99 ms", "max ms", "status"
    );
    for r in &reports {
        println!(
            "{:<24} {:>8} {:>10.3} {:>10.3} {:>10.3} {:>7}",
            r.label,
            r.matches,
            r.quantile(0.5).as_secs_f64() * 1e3,
            r.quantile(0.99).as_secs_f64() * 1e3,
            r.quantile(1.0).as_secs_f64() * 1e3,
            format!("{:04X}", r.status)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `pacsd move`.
pub async fn move_to(remote: Remote, dest: String, what: RetrieveArgs) -> anyhow::Result<ExitCode> {
    let progress = !what.no_progress;
    let r = pacsd::tools::move_to(&remote.options(), &what.spec(), &dest, progress).await?;
    println!("C-MOVE to {dest}: {r}");
    Ok(exit_code(&r.status))
}

/// `pacsd get`.
pub async fn get_into(
    remote: Remote,
    out: PathBuf,
    what: RetrieveArgs,
) -> anyhow::Result<ExitCode> {
    let progress = !what.no_progress;
    let r = pacsd::tools::get_into(&remote.options(), &what.spec(), &out, progress).await?;
    println!("C-GET into {}: {r}", out.display());
    Ok(exit_code(&r.status))
}
