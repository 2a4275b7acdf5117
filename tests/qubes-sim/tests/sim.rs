//! `qubes-sim up|exec|down` with the real `cloudstore` agent: qubes as separate process
//! trees, users and namespaces; qubesdb and policy from the dom0 package's mapping; the
//! qrexec policy enforced between qubes.

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;
use common::{cloudstore, SIM};

struct Sim {
    dir: tempfile::TempDir,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            dir: tempfile::Builder::new()
                .prefix("qubes-sim-test")
                .tempdir()
                .unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn up(&self, config: &str) -> Output {
        let cfg = self.path().join("sim.toml");
        std::fs::write(&cfg, config).unwrap();
        Command::new(SIM)
            .args(["up", "--config"])
            .arg(&cfg)
            .arg("--dir")
            .arg(self.path().join("d"))
            .arg("--cloudstore")
            .arg(cloudstore())
            .args(["--ready-timeout", "20", "--restart-delay-ms", "200"])
            .output()
            .unwrap()
    }

    fn exec_as(&self, user: &str, qube: &str, cmd: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(SIM)
            .args(["exec", "--user", user, "--dir"])
            .arg(self.path().join("d"))
            .arg(qube)
            .arg("--")
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command that does not read its input may exit before we write it.
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    }

    fn exec(&self, qube: &str, cmd: &[&str]) -> Output {
        self.exec_as("user", qube, cmd, b"")
    }

    fn sh(&self, qube: &str, script: &str) -> String {
        let out = self.exec(qube, &["sh", "-c", script]);
        assert!(out.status.success(), "{script}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn down(&self) -> Output {
        Command::new(SIM)
            .args(["down", "--dir"])
            .arg(self.path().join("d"))
            .output()
            .unwrap()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Never leave qubes running after a failed assertion.
        let _ = self.down();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const STORAGE_AND_PLAIN: &str = r#"
[qube.storage]
features = { "cloudstore.role" = "storage", "cloudstore.volumes" = "work" }
[qube.plain]
[qube.online]
netvm = true
"#;

#[test]
fn up_exec_down_with_a_storage_qube_and_plain_qubes() {
    let sim = Sim::new();
    let d = sim.path().join("d");
    let out = sim.up(STORAGE_AND_PLAIN);
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}{}", text(&out.stderr));
    assert!(
        so.contains("storage: up, cloudstore storage agent ready"),
        "{so}"
    );
    assert!(so.contains("plain: up (no cloudstore role)"), "{so}");

    // Its own user, host name and process tree.
    assert_eq!(sim.sh("plain", "id -un; hostname"), "user\nplain\n");
    let ps = sim.sh("plain", "ls /proc | grep -c '^[0-9]'");
    assert!(
        ps.trim().parse::<u32>().unwrap() < 6,
        "the qube sees only its own processes: {ps}"
    );
    let uid_plain = sim.sh("plain", "id -u");
    let uid_storage = sim.sh("storage", "id -u");
    assert_ne!(uid_plain, uid_storage, "each qube has its own user");
    assert_eq!(
        sim.exec_as("root", "plain", &["id", "-u"], b"").stdout,
        b"0\n"
    );

    // Standard streams and the exit status pass through.
    let out = sim.exec_as(
        "user",
        "plain",
        &["sh", "-c", "tr a-z A-Z; exit 7"],
        b"hello",
    );
    assert_eq!(out.stdout, b"HELLO");
    assert_eq!(out.status.code(), Some(7));

    // Other qubes' directories, dom0's policy and logs are out of sight.
    let listing = sim.sh(
        "plain",
        &format!("ls -a {}/qubes {}", d.display(), d.display()),
    );
    assert!(
        !listing.contains("storage") && !listing.contains("dom0"),
        "{listing}"
    );
    let out = sim.exec(
        "plain",
        &["cat", &format!("{}/qubes/storage/qube.json", d.display())],
    );
    assert!(!out.status.success());

    // Each qube has its own /tmp.
    sim.sh("plain", "echo mine > /tmp/plain-only");
    let out = sim.exec("online", &["cat", "/tmp/plain-only"]);
    assert!(!out.status.success(), "another qube's /tmp is visible");
    assert!(
        !Path::new("/tmp/plain-only").exists(),
        "the qube's /tmp leaked to the host"
    );

    // No netvm: loopback only. netvm = true: the host's network.
    let plain_net = sim.sh(
        "plain",
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    );
    assert_eq!(plain_net, "lo\n");
    let host_net = std::fs::read_to_string("/proc/net/dev").unwrap();
    let online_net = sim.sh("online", "cat /proc/net/dev");
    let names = |t: &str| {
        let mut v: Vec<String> = t
            .lines()
            .skip(2)
            .map(|l| l.split(':').next().unwrap().trim().to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&online_net), names(&host_net));

    // The storage agent runs as the qube's cloudstore user (its sandbox), and its sockets
    // are where the qube's /etc/qubes-rpc links point.
    let ps = sim.sh(
        "storage",
        "ps -eo user:20=,args= | grep 'cloudstore agent' | grep -v grep",
    );
    assert!(ps.starts_with("cloudstore "), "{ps}");
    let confined = sim.sh(
        "storage",
        &format!(
            "grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/$(cat {}/qubes/storage/run/agent.pid)/status",
            d.display()
        ),
    );
    assert!(
        confined.contains("Seccomp:\t2"),
        "seccomp filter active: {confined}"
    );
    assert!(confined.contains("CapEff:\t0000000000000000"), "{confined}");
    let rpc = d.join("qubes/storage/rpc/cloudstore.Volume");
    assert!(std::fs::metadata(&rpc).unwrap().file_type().is_socket());

    // /home/user persists across down and up; so does the storage's data.
    sim.sh("plain", "echo kept > ~/note");
    let out = sim.down();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("stopped"));
    let out = sim.exec("plain", &["true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );
    assert!(d
        .join("qubes/storage/rw/bind-dirs/var/lib/cloudstore/volumes/work")
        .is_dir());
    let out = sim.up(STORAGE_AND_PLAIN);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sim.sh("plain", "cat ~/note"), "kept\n");
    // A second up while running is refused.
    let out = sim.up(STORAGE_AND_PLAIN);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already up"),
        "{}",
        text(&out.stderr)
    );
    assert!(sim.down().status.success());
}

/// The client hello of docs/protocol.md: magic, versions 1..1, role, no features.
fn hello(role: u8) -> Vec<u8> {
    let mut h = b"CSTORE\r\n".to_vec();
    h.extend_from_slice(&[1, 0, 1, 0, role, 0, 0, 0, 0, 0, 0, 0]);
    h
}

const CONSUMERS: &str = r#"
[qube.storage]
features = { "cloudstore.role" = "storage", "cloudstore.volumes" = "work photos" }
[qube.my-work]
features = { "cloudstore.role" = "consumer", "cloudstore.volumes" = "work" }
[qube.my-photos]
features = { "cloudstore.role" = "consumer", "cloudstore.volumes" = "photos" }
"#;

#[test]
fn the_policy_lets_each_consumer_reach_only_its_own_volume() {
    let sim = Sim::new();
    let out = sim.up(CONSUMERS);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The policy is the dom0 package's, written as `cloudstore-admin policy --write` does.
    let policy =
        std::fs::read_to_string(sim.path().join("d/dom0/policy.d/70-cloudstore.policy")).unwrap();
    assert!(
        policy.contains("cloudstore.Volume +work my-work @default allow target=storage"),
        "{policy}"
    );

    // Allowed: the storage agent answers the protocol handshake with "accepted".
    let out = sim.exec_as(
        "user",
        "my-work",
        &["qrexec-client-vm", "@default", "cloudstore.Volume+work"],
        &hello(1),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.len() >= 26, "{:?}", out.stdout);
    assert_eq!(&out.stdout[..8], b"CSTORE\r\n");
    assert_eq!(&out.stdout[8..10], &[0, 0], "status accepted");

    // Refused: my-photos asking for the work volume, by @default or by name.
    for target in ["@default", "storage"] {
        let out = sim.exec_as(
            "user",
            "my-photos",
            &["qrexec-client-vm", target, "cloudstore.Volume+work"],
            &hello(1),
        );
        assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).ends_with("Request refused\n"),
            "{}",
            text(&out.stderr)
        );
        assert!(
            out.stdout.is_empty(),
            "nothing of the work volume reaches my-photos"
        );
    }
    // ... while its own volume is served.
    let out = sim.exec_as(
        "user",
        "my-photos",
        &["qrexec-client-vm", "@default", "cloudstore.Volume+photos"],
        &hello(1),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(&out.stdout[8..10], &[0, 0]);
    // No consumer may use the transfer's service.
    let out = sim.exec(
        "my-work",
        &["qrexec-client-vm", "@default", "cloudstore.Sync+work"],
    );
    assert_eq!(out.status.code(), Some(126));
    // The caller's name comes from dom0, not from the caller: my-photos cannot pose as
    // my-work through the direct-mode variables (the storage qube's sockets are not
    // even visible from inside my-photos).
    let out = sim.exec_as(
        "user",
        "my-photos",
        &[
            "env",
            "-u",
            "QUBES_SIM_QREXEC_SOCKET",
            "QUBES_SIM_QUBE=my-work",
            &format!("QUBES_SIM_QREXEC_DIR={}/d/qubes", sim.path().display()),
            "qrexec-client-vm",
            "@default",
            "cloudstore.Volume+work",
        ],
        &hello(1),
    );
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    // dom0 logged both decisions.
    let log = std::fs::read_to_string(sim.path().join("d/dom0/dom0.log")).unwrap();
    assert!(
        log.contains("cloudstore.Volume+work: my-work -> @default: allowed to storage"),
        "{log}"
    );
    assert!(
        log.contains("cloudstore.Volume+work: my-photos -> @default: denied"),
        "{log}"
    );
}

#[test]
fn a_qube_whose_agent_fails_is_named_with_the_reason() {
    let sim = Sim::new();
    // A consumer with a relative mount point: the agent refuses to start (a configuration
    // error, exit 78, never restarted); the other qubes still come up.
    let out = sim.up(
        r#"
[qube.storage]
features = { "cloudstore.role" = "storage", "cloudstore.volumes" = "work" }
[qube.broken]
features = { "cloudstore.role" = "consumer", "cloudstore.volumes" = "work", "cloudstore.mountpoint" = "CloudStore" }
"#,
    );
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(so.contains("storage: up"), "{so}");
    assert!(so.contains("broken: FAILED"), "{so}");
    assert!(so.contains("exited 78; not restarted"), "{so}");
    assert!(
        so.contains("/cloudstore/mountpoint"),
        "the reason is quoted from the agent's log: {so}"
    );
    assert!(
        text(&out.stderr).contains("qubes-sim down"),
        "{}",
        text(&out.stderr)
    );
    // The qube itself is still there to look into.
    assert_eq!(sim.sh("broken", "hostname"), "broken\n");
}

#[test]
fn bad_configurations_fail_before_anything_starts() {
    let sim = Sim::new();
    let out = sim.up("[qube.storage]\nfeatures = { \"cloudstore.role\" = 7 }\n");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("sim.toml"),
        "{}",
        text(&out.stderr)
    );
    // A role the dom0 package refuses: its policy command says why.
    let out = sim.up("[qube.a]\nfeatures = { \"cloudstore.role\" = \"bogus\" }\n");
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains("bogus"), "{e}");
    assert!(!sim.path().join("d/dom0/dom0.pid").exists());
}

fn sim_cmd_dir(sim: &Sim, verb: &str) -> Output {
    Command::new(SIM)
        .args([verb, "--dir"])
        .arg(sim.path().join("d"))
        .output()
        .unwrap()
}

fn sim_cmd(sim: &Sim, verb: &str, qube: &str) -> Output {
    Command::new(SIM)
        .args([verb, "--dir"])
        .arg(sim.path().join("d"))
        .arg(qube)
        .output()
        .unwrap()
}

#[test]
fn a_killed_agent_restarts_and_a_qube_shuts_down_and_starts_again() {
    let sim = Sim::new();
    let out = sim.up(STORAGE_AND_PLAIN);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid_file = sim.path().join("d/qubes/storage/run/agent.pid");
    let first = std::fs::read_to_string(&pid_file).unwrap();
    // kill -9 inside the qube: Restart=on-abnormal brings the agent back.
    let out = sim.exec_as("root", "storage", &["kill", "-9", first.trim()], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = sim.path().join("d/dom0/dom0.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let l = std::fs::read_to_string(&log).unwrap();
        if l.contains("storage: cloudstore-storage.service ready again") {
            assert!(l.contains("killed by SIGKILL; restarting"), "{l}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no restart: {l}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = std::fs::read_to_string(&pid_file).unwrap();
    assert_ne!(first, second);

    // qvm-shutdown and qvm-start of one qube; the other keeps running.
    let out = sim_cmd(&sim, "shutdown", "storage");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "storage: stopped\n");
    assert!(!sim.exec("storage", &["true"]).status.success());
    assert_eq!(sim.sh("plain", "hostname"), "plain\n");
    let ls = text(&sim_cmd_dir(&sim, "ls").stdout);
    let row = |name: &str| {
        ls.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in {ls}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("storage")[1], "Halted", "{ls}");
    assert_eq!(row("plain")[1..4], ["Running", "no", "-"], "{ls}");
    assert_eq!(row("online")[2], "yes", "{ls}");
    let out = sim_cmd(&sim, "start", "storage");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "storage: ready storage\n");
    assert!(sim.exec("storage", &["true"]).status.success());
    let ls = text(&sim_cmd_dir(&sim, "ls").stdout);
    assert!(
        ls.lines().any(|l| l.starts_with("storage ")
            && l.contains("Running")
            && l.contains("storage (ready)")
            && l.contains("serving volumes: work")),
        "{ls}"
    );
    let out = sim_cmd(&sim, "start", "nosuch");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no qube \"nosuch\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_qubes_stop_with_a_killed_dom0_and_come_up_again() {
    let sim = Sim::new();
    let config = "[qube.plain]\n[qube.other]\n";
    assert!(sim.up(config).status.success());
    let d = sim.path().join("d");
    let dom0: i32 = std::fs::read_to_string(d.join("dom0/dom0.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let init: i32 = std::fs::read_to_string(d.join("qubes/plain/run/init.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let st = Command::new("kill")
        .args(["-9", &dom0.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // Each qube's init learns of it (parent-death signal) and ends the qube.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while Path::new(&format!("/proc/{init}/cmdline")).exists()
        && !std::fs::read(format!("/proc/{init}/cmdline"))
            .unwrap_or_default()
            .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "qube plain outlived dom0"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = sim.down();
    assert!(
        text(&out.stdout).contains("nothing is running"),
        "{}",
        text(&out.stdout)
    );
    let out = sim.up(config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sim.sh("other", "hostname"), "other\n");
}

fn sim_run(sim: &Sim, args: &[&str]) -> Output {
    Command::new(SIM)
        .arg(args[0])
        .arg("--dir")
        .arg(sim.path().join("d"))
        .args(&args[1..])
        .output()
        .unwrap()
}

#[test]
fn features_change_live_and_the_policy_follows_when_written_again() {
    let sim = Sim::new();
    let out = sim.up(r#"
[qube.storage]
features = { "cloudstore.role" = "storage", "cloudstore.volumes" = "work" }
[qube.my-photos]
"#);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The dom0 extension's checks refuse a bad value before anything changes.
    let out = sim_run(&sim, &["feature", "storage", "cloudstore.role", "bogus"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("'bogus' is not a role"),
        "{}",
        text(&out.stderr)
    );
    // A new volume on the running storage qube: its agent follows qubesdb.
    let out = sim_run(
        &sim,
        &["feature", "storage", "cloudstore.volumes", "work photos"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        sim.sh("storage", "qubesdb-read /cloudstore/volumes"),
        "work photos\n"
    );
    for (k, v) in [
        ("cloudstore.volumes", "photos"),
        ("cloudstore.role", "consumer"),
    ] {
        let out = sim_run(&sim, &["feature", "my-photos", k, v]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let call = |sim: &Sim| {
        sim.exec_as(
            "user",
            "my-photos",
            &["qrexec-client-vm", "@default", "cloudstore.Volume+photos"],
            &hello(1),
        )
    };
    // The policy is what `cloudstore-admin policy --write` wrote: not yet for my-photos.
    assert_eq!(call(&sim).status.code(), Some(126));
    let out = sim_run(&sim, &["policy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = call(&sim);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        &out.stdout[..10],
        b"CSTORE\r\n\0\0",
        "storage serves the new volume"
    );
    // A role set on a running qube starts nothing until the qube starts again (the
    // units are gated at boot), then the consumer agent comes up.
    let out = sim_run(&sim, &["shutdown", "my-photos"]);
    assert!(out.status.success());
    let out = sim_run(&sim, &["start", "my-photos"]);
    assert_eq!(
        text(&out.stdout),
        "my-photos: ready consumer\n",
        "{}",
        text(&out.stderr)
    );
    let out = sim_run(
        &sim,
        &["feature", "--delete", "my-photos", "cloudstore.volumes"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sim.exec("my-photos", &["qubesdb-read", "/cloudstore/volumes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
}

#[test]
fn an_executable_service_runs_inside_the_target_qube_as_its_user() {
    let sim = Sim::new();
    let out = sim.up("[qube.plain]\n[qube.server]\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let d = sim.path().join("d");
    // A service installed in server's /etc/qubes-rpc, and a rule of the user's own.
    let svc = d.join("qubes/server/rpc/test.Who");
    std::fs::write(
        &svc,
        "#!/bin/sh\necho \"$(id -un)@$(hostname) for $QREXEC_REMOTE_DOMAIN arg=$1\"\nexec tr a-z A-Z\n",
    )
    .unwrap();
    std::fs::set_permissions(&svc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        d.join("dom0/policy.d/30-user.policy"),
        "test.Who * plain server allow\n",
    )
    .unwrap();
    let out = sim.exec_as(
        "user",
        "plain",
        &["qrexec-client-vm", "server", "test.Who+x"],
        b"data",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "user@server for plain arg=x\nDATA");
    // The other way round has no rule.
    let out = sim.exec("server", &["qrexec-client-vm", "plain", "test.Who"]);
    assert_eq!(out.status.code(), Some(126));
}

#[test]
fn a_local_cloud_folder_belongs_to_the_transfer_qubes_account() {
    let sim = Sim::new();
    let cloud = sim.path().join("cloud");
    // Whether the transfer agent itself comes up is the transfer role's business; the
    // stand-in's part is the folder standing for the account at the provider.
    let _ = sim.up(&format!(
        r#"
[qube.storage]
features = {{ "cloudstore.role" = "storage", "cloudstore.volumes" = "work" }}
[qube.transfer]
netvm = true
features = {{ "cloudstore.role" = "transfer", "cloudstore.remote" = "{}" }}
"#,
        cloud.display()
    ));
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sim.path().join("d/qubes/transfer/qube.json")).unwrap(),
    )
    .unwrap();
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&cloud).unwrap();
    assert_eq!(m.uid() as u64, state["cs_uid"].as_u64().unwrap());
    assert_eq!(m.mode() & 0o777, 0o700);
    // A folder of someone else's is left alone, with a warning.
    assert!(sim.down().status.success());
    std::os::unix::fs::chown(&cloud, Some(0), Some(0)).unwrap();
    let out = sim.up(&format!(
        "[qube.storage]\nfeatures = {{ \"cloudstore.role\" = \"storage\" }}\n\
         [qube.transfer]\nnetvm = true\nfeatures = {{ \"cloudstore.role\" = \"transfer\", \"cloudstore.remote\" = \"{}\" }}\n",
        cloud.display()
    ));
    assert!(
        text(&out.stdout).contains("belongs to uid 0"),
        "{}",
        text(&out.stdout)
    );
    // What the transfer agent then does with the folder is the role's business (it hands
    // a local remote below the top level to its sandbox user).
}
