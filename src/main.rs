use clap::Parser;

fn main() {
    let cli = corral::cli::Cli::parse();
    std::process::exit(corral::cli::main(cli));
}
