//! dom0's qrexec broker in process: the caller is named by the trigger socket, the policy
//! decides, the service gets qrexec-agent's descriptor; hostile requests are refused.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use qubes_sim::broker::{request, Broker, Endpoint};
use qubes_sim::qrexec::{Call, CallError};

struct Setup {
    dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

/// Qubes storage, my-work, my-photos; storage serves `a.Echo` (answers "from <descriptor>")
/// and the policy lets only my-work call it. Returns the trigger sockets by qube.
fn setup() -> (Setup, BTreeMap<String, std::path::PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("policy.d")).unwrap();
    fs::write(
        d.join("policy.d/70-test.policy"),
        "a.Echo +x my-work @default allow target=storage\na.Echo * @anyvm @anyvm deny\n",
    )
    .unwrap();
    let mut endpoints = BTreeMap::new();
    for q in ["storage", "my-work", "my-photos"] {
        fs::create_dir_all(d.join(q)).unwrap();
        endpoints.insert(
            q.to_owned(),
            Endpoint {
                service_dir: d.join(q),
                enter: None,
            },
        );
    }
    let svc = UnixListener::bind(d.join("storage/a.Echo")).unwrap();
    thread::spawn(move || {
        for c in svc.incoming() {
            let mut c = c.unwrap();
            thread::spawn(move || {
                let mut desc = Vec::new();
                let mut b = [0u8; 1];
                while c.read(&mut b).unwrap() == 1 && b[0] != 0 {
                    desc.push(b[0]);
                }
                let mut rest = Vec::new();
                c.read_to_end(&mut rest).unwrap();
                c.write_all(b"from ").unwrap();
                c.write_all(&desc).unwrap();
                c.write_all(b": ").unwrap();
                c.write_all(&rest).unwrap();
            });
        }
    });
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    let broker = Arc::new(Broker::new(
        d.join("policy.d"),
        endpoints,
        Box::new(move |m: &str| l2.lock().unwrap().push(m.to_owned())),
    ));
    let mut triggers = BTreeMap::new();
    for q in ["storage", "my-work", "my-photos"] {
        let p = d.join(format!("{q}.trigger"));
        broker.serve(q.to_owned(), UnixListener::bind(&p).unwrap());
        triggers.insert(q.to_owned(), p);
    }
    (Setup { dir, log }, triggers)
}

fn call(trigger: &Path, target: &str, service: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
    let mut s = request(trigger, &Call::parse(target, service).unwrap())?;
    s.write_all(input).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    Ok(out)
}

#[test]
fn the_caller_is_the_qube_of_the_trigger_socket() {
    let (s, t) = setup();
    let out = call(&t["my-work"], "@default", "a.Echo+x", b"hi").unwrap();
    assert_eq!(out, b"from a.Echo+x my-work: hi");
    match call(&t["my-photos"], "@default", "a.Echo+x", b"hi") {
        Err(CallError::Refused(m)) => assert!(m.contains("70-test.policy:2"), "{m}"),
        other => panic!(
            "{:?}",
            other.map(|v| String::from_utf8_lossy(&v).into_owned())
        ),
    }
    let log = s.log.lock().unwrap().join("\n");
    assert!(
        log.contains("a.Echo+x: my-work -> @default: allowed to storage"),
        "{log}"
    );
    assert!(
        log.contains("a.Echo+x: my-photos -> @default: denied"),
        "{log}"
    );
    drop(s.dir);
}

#[test]
fn policy_changes_apply_to_the_next_call() {
    let (s, t) = setup();
    fs::write(
        s.dir.path().join("policy.d/30-user.policy"),
        "a.Echo +x my-photos @default allow target=storage\n",
    )
    .unwrap();
    let out = call(&t["my-photos"], "@default", "a.Echo+x", b"").unwrap();
    assert_eq!(out, b"from a.Echo+x my-photos: ");
}

#[test]
fn a_missing_service_fails_and_an_unknown_target_is_refused() {
    let (s, t) = setup();
    fs::write(
        s.dir.path().join("policy.d/10-all.policy"),
        "* * @anyvm @anyvm allow\n",
    )
    .unwrap();
    assert!(matches!(
        call(&t["my-work"], "storage", "no.Such", b""),
        Err(CallError::Failed(m)) if m.contains("no.Such+ not found")
    ));
    assert!(matches!(
        call(&t["my-work"], "elsewhere", "a.Echo", b""),
        Err(CallError::Refused(m)) if m.contains("invalid target")
    ));
}

fn raw(trigger: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(trigger).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn hostile_requests_are_answered_and_cost_nothing() {
    let (_s, t) = setup();
    let trig = &t["my-photos"];
    // Truncated, oversized, not UTF-8, invalid names: a failure or refusal, never a call.
    for bad in [
        &b""[..],
        b"storage\0a.Echo",
        b"\xff\xfe\0a.Echo+x\0",
        b"storage\0a b\0",
        b"../storage\0a.Echo+x\0",
    ] {
        let out = raw(trig, bad);
        assert!(
            out.is_empty() || out[0] == b'F' || out[0] == b'R',
            "{bad:?} -> {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    let huge = vec![b'a'; 100_000];
    let out = raw(trig, &huge);
    assert_eq!(out.first(), Some(&b'F'));
    assert!(String::from_utf8_lossy(&out).contains("longer than"));
    // The broker still serves afterwards.
    let out = call(&t["my-work"], "@default", "a.Echo+x", b"ok").unwrap();
    assert_eq!(out, b"from a.Echo+x my-work: ok");
}
