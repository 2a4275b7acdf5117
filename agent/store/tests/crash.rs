//! Crash tests: a child process works on a store and is killed with SIGKILL at a random
//! moment; the parent reopens the store and checks that every file is one complete version,
//! nothing acknowledged is missing, the journal opens and accounts for every acknowledged
//! change, and no staged debris is visible.
//!
//! This test binary has its own `main` (harness = false): run without arguments it is the
//! parent; with `CLOUDSTORE_CRASH_CHILD=<scenario>` and `CLOUDSTORE_CRASH_DATA=<dir>` it is
//! the child that gets killed.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cloudstore_store::*;

/// Rounds per scenario: each kills at a different moment. Small, to keep CI fast; the seed is
/// printed so a failure can be replayed.
const ROUNDS: usize = 6;

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

/// A file body that proves itself complete: "<n>:<len>:" then `len` copies of (n % 251).
fn body(n: u64) -> Vec<u8> {
    let len = 1000 + (n as usize * 7919) % 300_000;
    let mut b = format!("{n}:{len}:").into_bytes();
    b.extend(std::iter::repeat((n % 251) as u8).take(len));
    b
}

fn check_body(b: &[u8]) -> u64 {
    let s = String::from_utf8_lossy(&b[..b.len().min(40)]).to_string();
    let mut it = s.splitn(3, ':');
    let n: u64 = it
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("torn header {s:?}"));
    let len: usize = it.next().unwrap().parse().unwrap();
    let head = format!("{n}:{len}:").len();
    assert_eq!(
        b.len(),
        head + len,
        "file of put #{n} is torn: {} bytes",
        b.len()
    );
    assert!(
        b[head..].iter().all(|&c| c == (n % 251) as u8),
        "file of put #{n} has mixed content"
    );
    n
}

fn child(scenario: &str, data: &str) {
    let store = Store::open(data, StoreConfig::default()).unwrap();
    let vol = store.open_or_create_volume("work").unwrap();
    let out = std::io::stdout();
    let ack = |n: u64| {
        use std::io::Write;
        let mut o = out.lock();
        writeln!(o, "{n}").unwrap();
        o.flush().unwrap();
    };
    let start: u64 = std::env::var("CLOUDSTORE_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let mut n = start;
    loop {
        match scenario {
            "put" => {
                vol.put(&p("f"), &mut &body(n)[..], PutOptions::default())
                    .unwrap();
            }
            "namespace" => {
                let name = format!("n{n}");
                vol.create(&p(&name), 0o600, true).unwrap();
                vol.rename(&p(&name), &p("cur"), RenameMode::Replace)
                    .unwrap();
                vol.mkdir(&p(&format!("d{n}")), 0o700).unwrap();
                vol.rmdir(&p(&format!("d{n}"))).unwrap();
            }
            "write" => {
                // One long modification session, never released.
                vol.write(&p("w"), (n % 64) * 4096, &[n as u8; 4096])
                    .unwrap();
            }
            other => panic!("unknown scenario {other}"),
        }
        ack(n);
        n += 1;
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, m: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % m
    }
}

/// Runs the child until `acks` acknowledgements plus a random delay, then SIGKILLs it.
/// Returns the last acknowledged number, if any.
fn run_and_kill(
    scenario: &str,
    data: &std::path::Path,
    start: u64,
    acks: u64,
    delay_us: u64,
) -> Option<u64> {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .env("CLOUDSTORE_CRASH_CHILD", scenario)
        .env("CLOUDSTORE_CRASH_DATA", data)
        .env("CLOUDSTORE_CRASH_START", start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    let mut last = None;
    for _ in 0..acks {
        match lines.next() {
            Some(Ok(l)) => last = Some(l.parse().unwrap()),
            other => panic!("child {scenario} stopped early: {other:?}"),
        }
    }
    std::thread::sleep(Duration::from_micros(delay_us));
    // SAFETY: kill(2) on our own child's pid, which we have not yet reaped.
    assert_eq!(unsafe { libc::kill(c.id() as i32, libc::SIGKILL) }, 0);
    // Acknowledgements already written before the kill count too.
    for l in lines.map_while(Result::ok) {
        last = Some(l.parse().unwrap());
    }
    let status = c.wait().unwrap();
    assert!(!status.success(), "child should have been killed");
    last
}

fn reopen(data: &std::path::Path) -> (Store, Arc<Volume>) {
    let store = Store::open(data, StoreConfig::default()).expect("store reopens after a kill");
    let vol = store.volume("work").unwrap();
    (store, vol)
}

fn changes(vol: &Volume) -> Vec<ChangeEntry> {
    match vol.changes_since(1, usize::MAX).unwrap() {
        Changes::Entries { entries, .. } => entries,
        other => panic!("{other:?}"),
    }
}

fn staging_empty(data: &std::path::Path) {
    let n = std::fs::read_dir(data.join("volumes/work/staging"))
        .unwrap()
        .count();
    assert_eq!(n, 0, "staged debris left after reopen");
}

fn scenario_put(rng: &mut Rng) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut start = 0;
    let mut last_seq = 0;
    for round in 0..ROUNDS {
        let acked = run_and_kill("put", &data, start, 1 + rng.next(20), rng.next(3000));
        let (store, vol) = reopen(&data);
        staging_empty(&data);
        let mut f = Vec::new();
        vol.get(&p("f")).unwrap().read_to_end(&mut f).unwrap();
        let n = check_body(&f);
        let acked = acked.expect("at least one ack");
        assert!(
            n == acked || n == acked + 1,
            "round {round}: file holds put #{n}, last ack #{acked}"
        );
        // Every replaced file is a complete version.
        for v in vol.list_versions(&p("f")) {
            let mut b = Vec::new();
            vol.open_version(&p("f"), v.id)
                .unwrap()
                .read_to_end(&mut b)
                .unwrap();
            check_body(&b);
        }
        // The journal holds a Put for each acknowledged put, numbering strictly increasing.
        let e = changes(&vol);
        let puts = e.iter().filter(|e| e.kind == ChangeKind::Put).count() as u64;
        assert!(
            puts > acked,
            "round {round}: {puts} puts journaled, {} acknowledged",
            acked + 1
        );
        assert!(e.last().unwrap().seq > last_seq);
        last_seq = e.last().unwrap().seq;
        start = n + 1;
        drop((vol, store));
    }
}

fn scenario_namespace(rng: &mut Rng) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut start = 0;
    for round in 0..ROUNDS {
        let acked =
            run_and_kill("namespace", &data, start, 1 + rng.next(30), rng.next(2000)).unwrap();
        let (store, vol) = reopen(&data);
        let e = changes(&vol);
        // Every acknowledged operation has its entry (write-ahead), in order.
        let renamed: Vec<_> = e
            .iter()
            .filter(|e| e.kind == ChangeKind::Rename)
            .map(|e| e.path.clone())
            .collect();
        for n in start..=acked {
            assert!(
                renamed.contains(&format!("n{n}")),
                "round {round}: rename of n{n} not journaled"
            );
        }
        for w in e.windows(2) {
            assert!(w[1].seq > w[0].seq);
        }
        // The tree never holds a directory whose rmdir was acknowledged.
        let names: Vec<String> = std::fs::read_dir(data.join("volumes/work/tree"))
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        for n in start..=acked {
            assert!(
                !names.contains(&format!("d{n}")),
                "round {round}: d{n} survived its acknowledged rmdir"
            );
        }
        start = acked + 100;
        drop((vol, store));
    }
}

fn scenario_write(rng: &mut Rng) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = Store::open(&data, StoreConfig::default()).unwrap();
        let vol = store.create_volume("work").unwrap();
        vol.put(
            &p("w"),
            &mut &vec![0xAAu8; 64 * 4096][..],
            PutOptions::default(),
        )
        .unwrap();
    }
    let mut start = 0;
    for round in 0..ROUNDS {
        let acked = run_and_kill("write", &data, start, 1 + rng.next(50), rng.next(2000)).unwrap();
        let (store, vol) = reopen(&data);
        let e = changes(&vol);
        // The session the kill interrupted is closed by the reopen, with the final size.
        let last_start = e
            .iter()
            .rposition(|e| e.kind == ChangeKind::ModifyStart)
            .unwrap();
        let end = e[last_start..]
            .iter()
            .find(|e| e.kind == ChangeKind::ModifyEnd)
            .unwrap_or_else(|| panic!("round {round}: no ModifyEnd after the crash"));
        assert_eq!(end.size, 64 * 4096);
        // Each acknowledged block is in the file.
        let block = (acked % 64) * 4096;
        assert_eq!(
            vol.read(&p("w"), block, 4096).unwrap(),
            vec![acked as u8; 4096]
        );
        // The snapshot taken at the session's start is the content before it.
        let versions = vol.list_versions(&p("w"));
        assert_eq!(versions.len(), round + 1, "one snapshot per session");
        start = acked + 1;
        drop((vol, store));
    }
}

fn main() {
    if let Ok(scenario) = std::env::var("CLOUDSTORE_CRASH_CHILD") {
        let data = std::env::var("CLOUDSTORE_CRASH_DATA").unwrap();
        child(&scenario, &data);
        return;
    }
    // libtest-style arguments (e.g. --list from some runners) are ignored; filters too.
    if std::env::args().any(|a| a == "--list") {
        println!("crash: test");
        return;
    }
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash tests, seed {seed}");
    let mut rng = Rng(seed);
    for (name, f) in [
        ("put", scenario_put as fn(&mut Rng)),
        ("namespace", scenario_namespace),
        ("write", scenario_write),
    ] {
        let t = Instant::now();
        f(&mut rng);
        println!(
            "crash scenario {name}: {ROUNDS} kills survived ({:.1?})",
            t.elapsed()
        );
    }
}
