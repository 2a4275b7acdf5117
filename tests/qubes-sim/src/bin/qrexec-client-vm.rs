//! `qrexec-client-vm` of the Qubes stand-in: see `qubes_sim::qrexec`.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let code = qubes_sim::qrexec::client_main(&args);
    std::process::exit(code);
}
