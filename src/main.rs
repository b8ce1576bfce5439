use clap::Parser;

fn main() {
    // The isolation shim runs in every instance before its program: no config, no runtime.
    if std::env::args_os().nth(1).as_deref() == Some(corral::isolation::shim::SUBCOMMAND.as_ref()) {
        std::process::exit(corral::isolation::shim::main());
    }
    let cli = corral::cli::Cli::parse();
    std::process::exit(corral::cli::main(cli));
}
