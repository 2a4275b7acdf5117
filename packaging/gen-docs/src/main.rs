//! `cloudstore-gen-docs OUTDIR`: writes the man pages and shell completions of the
//! `cloudstore` command, generated from its clap definition (`cloudstore::cli::Cli`), so
//! the packages never ship a page that disagrees with `--help`.
//!
//! Layout of OUTDIR (what debian/rules and rpm/cloudstore.spec install):
//! - `man/cloudstore.1`, `man/cloudstore-<subcommand>.1`
//! - `completions/cloudstore.bash`, `completions/_cloudstore` (zsh), `completions/cloudstore.fish`

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::CommandFactory;
use clap_complete::Shell;

/// The qubesdb-configured roles and the files a user looks at; appended to cloudstore(1)
/// because clap's help text describes options, not the system around them.
const EXTRA_SECTIONS: &str = r#".SH ROLES
Each qube runs at most one role, set in dom0 with
.B qvm-features QUBE cloudstore.role storage|transfer|consumer
and read from qubesdb (\fI/cloudstore/role\fR, or \fI/vm-config/cloudstore.role\fR on a stock dom0).
systemd starts \fBcloudstore agent\fR from the unit of that role:
.BR cloudstore-storage.service ,
.BR cloudstore-transfer.service ,
.BR cloudstore-consumer.service .
The units of the other roles are skipped. The consumer unit requires
.BR cloudstore-consumer-mounts.service ,
which runs \fBcloudstore consumer-mounts\fR, the only process of the role that mounts and
unmounts; it hands each mount's FUSE descriptor to the agent.
.SH EXIT STATUS
.B cloudstore agent
exits 0 after a clean stop, 1 when the role or qubesdb failed, 75 when the role changed
(systemd starts it again), and 78 (EX_CONFIG) for a configuration mistake, which the units
do not restart.
.SH FILES
.TP
.I /var/lib/cloudstore
Storage and transfer state (kept across reboots of an app qube by bind-dirs).
.TP
.I /var/lib/cloudstore/rclone/rclone.conf
The transfer qube's rclone configuration.
.TP
.I /run/cloudstore
Sockets: \fIvolume.sock\fR and \fIsync.sock\fR (storage; the qrexec services
\fIcloudstore.Volume\fR and \fIcloudstore.Sync\fR), \fIconsumer.sock\fR (consumer).
.TP
.I ~/CloudStore/VOLUME
A consumer's unlocked volume.
.SH LOGS
.B journalctl -u cloudstore-storage
(or \-transfer, \-consumer); fields ROLE, VOLUME, PEER, OP, PATH select events, e.g.
.BR "journalctl -u cloudstore-storage VOLUME=work" .
"#;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: cloudstore-gen-docs OUTDIR");
    };
    generate(Path::new(&out))
}

fn generate(out: &Path) -> anyhow::Result<()> {
    let cmd = cloudstore::cli::Cli::command();
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    for dir in [&man_dir, &comp_dir] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .context("rendering cloudstore.1")?;
    page.extend_from_slice(EXTRA_SECTIONS.as_bytes());
    write(&man_dir.join("cloudstore.1"), &page)?;

    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap takes a command name only as &'static str (no "string" feature); a handful
        // of short names leaked once by a process that exits right after is no loss.
        let name: &'static str =
            Box::leak(format!("cloudstore-{}", sub.get_name()).into_boxed_str());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name))
            .render(&mut page)
            .with_context(|| format!("rendering {name}.1"))?;
        write(&man_dir.join(format!("{name}.1")), &page)?;
    }

    for (shell, file) in [
        (Shell::Bash, "cloudstore.bash"),
        (Shell::Zsh, "_cloudstore"),
        (Shell::Fish, "cloudstore.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "cloudstore", &mut script);
        write(&comp_dir.join(file), &script)?;
    }
    Ok(())
}

fn write(path: &PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
