//! `cloudstore`: the agent that systemd starts in each qube, and the user's command line.

fn main() -> std::process::ExitCode {
    cloudstore::cli::main()
}
