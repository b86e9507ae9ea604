//! The `pacsd` binary: the runtime, logging and the panic policy; the command line is `cli`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // dicom-rs's errors capture a backtrace whenever RUST_BACKTRACE is set, and its parser
    // makes one at the end of every data set and command set it reads (1.2% of pacsd's CPU
    // in a C-MOVE): library backtraces stay off unless asked for by RUST_LIB_BACKTRACE, while
    // RUST_BACKTRACE keeps its meaning for panics. Set before any thread exists.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread runs yet (the runtime is built below).
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(async_main()),
        Err(e) => {
            eprintln!("pacsd: cannot start the runtime: {e}");
            ExitCode::from(2)
        }
    }
}

async fn async_main() -> ExitCode {
    init_tracing();
    // A panic in pacsd's own code aborts (an HA peer takes over from a known state); one in a
    // decoder working on outside bytes is contained and answered with a failure status.
    pacsd::dataset::install_panic_hook();
    match cli::run(cli::Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pacsd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("pacsd=info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
