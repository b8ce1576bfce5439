use clap::Parser;
use corral::cli::{Cli, Command};

fn main() {
    // The isolation shim runs in every instance before its program: no config, no runtime.
    if std::env::args_os().nth(1).as_deref() == Some(corral::isolation::shim::SUBCOMMAND.as_ref()) {
        std::process::exit(corral::isolation::shim::main());
    }
    // A headless agent's terminal process: synchronous, no config, no runtime.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(corral::agent::headless::SUBCOMMAND) {
        std::process::exit(corral::agent::headless::main(&args[2..]));
    }
    let cli = Cli::parse();
    // The PID-1 split comes first: before the config is read, before logging, the Tokio
    // runtime or any thread exists (see `corral::pid1`).
    match &cli.command {
        Command::Init { argv } => std::process::exit(corral::pid1::init(argv)),
        Command::Serve if corral::pid1::serve_needs_split() => {
            std::process::exit(corral::pid1::serve_as_pid1())
        }
        _ => {}
    }
    std::process::exit(corral::cli::main(cli));
}
