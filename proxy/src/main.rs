//! The `meshlens-proxy` binary: runs one sidecar from a TOML configuration file.
#![forbid(unsafe_code)]

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = meshlens_proxy::cli::ProxyArgs::parse();
    meshlens_proxy::cli::init_logging();
    let runtime = meshlens_proxy::cli::runtime(args.worker_threads)?;
    runtime.block_on(meshlens_proxy::cli::run(args))
}
