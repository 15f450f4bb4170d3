//! The `meshlens-proxy` binary: runs one sidecar from a TOML configuration file.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = meshlens_proxy::cli::ProxyArgs::parse();
    meshlens_proxy::cli::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads)
        .enable_all()
        .build()?;
    runtime.block_on(meshlens_proxy::cli::run(args))
}
