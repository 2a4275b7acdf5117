//! dom0's part of qrexec in the stand-in: one trigger socket per qube, a policy decision
//! per call, and the relay between the caller and the service.
//!
//! In Qubes, `qrexec-client-vm` hands the request to the qube's qrexec-agent
//! (`/var/run/qubes/qrexec-agent`), which forwards it over vchan to dom0's qrexec-daemon for
//! that qube; dom0 knows the caller from the vchan the request arrived on, asks the policy
//! daemon, and connects the two agents (qubes-doc developer/services/qrexec-internals.md).
//! Here the trigger socket stands for the agent and its vchan: it lives in a directory only
//! the qube's user can enter, and the broker names the caller from the socket that
//! accepted the connection, never from anything the caller sends.
//!
//! Trigger protocol (private to the stand-in): the client sends `TARGET\0SERVICE+ARG\0`;
//! the broker answers one byte: `A` (allowed; from then on the connection is the service's
//! stream), `R` (refused) or `F` (failed), the last two followed by a message to end of
//! file.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::policy::{Decision, Policy, SystemInfo};
use crate::qrexec::{open_service, pump, Call, CallError, Enter};

/// Longest request: a 31-byte target and a 63-byte service, two NULs, with room to spare;
/// a peer sending more is not our client.
const MAX_REQUEST: usize = 256;

const ALLOWED: u8 = b'A';
const REFUSED: u8 = b'R';
const FAILED: u8 = b'F';

/// Makes the code that enters a qube as a user (`None`: the qube's default user), for an
/// executable service; called per call, since it opens the qube's namespaces.
pub type EnterFactory = Arc<dyn Fn(Option<&str>) -> io::Result<Enter> + Send + Sync>;

/// Where a qube's services are found and how to enter it.
#[derive(Clone)]
pub struct Endpoint {
    /// The qube's `/etc/qubes-rpc` (entries are sockets, symlinks to sockets, or
    /// executables).
    pub service_dir: PathBuf,
    pub enter: Option<EnterFactory>,
}

/// Decides and connects calls between the qubes it knows.
pub struct Broker {
    policy_dir: PathBuf,
    qubes: BTreeMap<String, Endpoint>,
    system: SystemInfo,
    log: Box<dyn Fn(&str) + Send + Sync>,
}

impl Broker {
    /// `policy_dir` is re-read for every call, as qrexec-policy-daemon reloads on change.
    pub fn new(
        policy_dir: PathBuf,
        qubes: BTreeMap<String, Endpoint>,
        log: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Broker {
        let system = SystemInfo::new(qubes.keys().map(String::as_str));
        Broker {
            policy_dir,
            qubes,
            system,
            log,
        }
    }

    /// Serves calls made from `source` on `listener` until the listener fails.
    pub fn serve(self: &Arc<Self>, source: String, listener: UnixListener) -> JoinHandle<()> {
        let broker = Arc::clone(self);
        thread::spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        let broker = Arc::clone(&broker);
                        let source = source.clone();
                        thread::spawn(move || broker.handle(&source, conn));
                    }
                    Err(e) => {
                        (broker.log)(&format!("qrexec: trigger socket of {source}: {e}"));
                        return;
                    }
                }
            }
        })
    }

    fn handle(&self, source: &str, mut conn: UnixStream) {
        let request = match read_request(&mut conn) {
            Ok(r) => r,
            Err(e) => {
                (self.log)(&format!("qrexec: bad request from {source}: {e}"));
                let _ = reply(&mut conn, FAILED, &format!("bad request: {e}"));
                return;
            }
        };
        let (target, service) = request;
        let call = match Call::parse(&target, &service) {
            Ok(c) => c,
            Err(e) => {
                (self.log)(&format!(
                    "qrexec: {service}: {source} -> {target}: denied: {e}"
                ));
                let _ = reply(&mut conn, REFUSED, &e);
                return;
            }
        };
        match self.connect(source, &call) {
            Ok((mut stream, mut process)) => {
                if conn.write_all(&[ALLOWED]).is_err() {
                    return;
                }
                relay(conn, &mut stream);
                if let Some(p) = process.as_mut() {
                    let _ = p.wait();
                }
            }
            Err(CallError::Refused(m)) => {
                let _ = reply(&mut conn, REFUSED, &m);
            }
            Err(CallError::Failed(m)) => {
                let _ = reply(&mut conn, FAILED, &m);
            }
        }
    }

    /// Policy, then the service in the target qube.
    pub fn connect(
        &self,
        source: &str,
        call: &Call,
    ) -> Result<(UnixStream, Option<std::process::Child>), CallError> {
        let head = format!("qrexec: {}: {source} -> {}", call.full_name(), call.target);
        let policy = Policy::load_dir(&self.policy_dir).map_err(|e| {
            (self.log)(&format!("{head}: denied: {e}"));
            CallError::Refused(e.to_string())
        })?;
        let decision = policy.evaluate(
            &call.service,
            &call.argument,
            source,
            &call.target,
            &self.system,
        );
        let (target, user) = match decision {
            Decision::Allow { target, rule, user } => {
                (self.log)(&format!("{head}: allowed to {target} by {rule}"));
                (target, user)
            }
            Decision::Deny { reason } => {
                (self.log)(&format!("{head}: denied: {reason}"));
                return Err(CallError::Refused(reason));
            }
        };
        let Some(endpoint) = self.qubes.get(&target) else {
            return Err(CallError::Failed(format!(
                "qube {target} is not running in the stand-in"
            )));
        };
        let enter = match &endpoint.enter {
            Some(factory) => Some(
                factory(user.as_deref())
                    .map_err(|e| CallError::Failed(format!("entering qube {target}: {e}")))?,
            ),
            None => None,
        };
        let c = open_service(&endpoint.service_dir, call, source, enter).map_err(|e| {
            if let CallError::Failed(m) = &e {
                (self.log)(&format!("{head}: failed: {m}"));
            }
            e
        })?;
        Ok((c.stream, c.process))
    }
}

/// Copies both ways; each direction half-closes the other side at its end of file. Ends
/// when both directions have ended.
fn relay(client: UnixStream, service: &mut UnixStream) {
    let (Ok(client2), Ok(service2)) = (client.try_clone(), service.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || {
        let _ = pump(&client2, &service2);
        let _ = service2.shutdown(Shutdown::Write);
    });
    let _ = pump(&*service, &client);
    // The caller's qrexec-client-vm ends the call at this end of file and closes its side,
    // which ends the other direction too.
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
}

fn reply(conn: &mut UnixStream, code: u8, message: &str) -> io::Result<()> {
    conn.write_all(&[code])?;
    conn.write_all(message.as_bytes())?;
    conn.shutdown(Shutdown::Write)
}

fn read_request(conn: &mut UnixStream) -> Result<(String, String), String> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    let mut parts = Vec::new();
    while parts.len() < 2 {
        match conn.read(&mut byte) {
            Ok(0) => return Err("connection closed inside the request".into()),
            Ok(_) if byte[0] == 0 => {
                parts.push(String::from_utf8(std::mem::take(&mut raw)).map_err(|_| "not UTF-8")?)
            }
            Ok(_) => {
                raw.push(byte[0]);
                if raw.len() + parts.iter().map(String::len).sum::<usize>() > MAX_REQUEST {
                    return Err(format!("request longer than {MAX_REQUEST} bytes"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let service = parts.pop().unwrap_or_default();
    let target = parts.pop().unwrap_or_default();
    Ok((target, service))
}

/// Client side: asks dom0 through the qube's trigger socket; on `Ok` the stream is the
/// service's.
pub fn request(socket: &Path, call: &Call) -> Result<UnixStream, CallError> {
    let mut conn = UnixStream::connect(socket).map_err(|e| {
        CallError::Failed(format!(
            "connecting to the qrexec trigger socket {}: {e}",
            socket.display()
        ))
    })?;
    let mut msg = Vec::new();
    msg.extend_from_slice(call.target.as_bytes());
    msg.push(0);
    msg.extend_from_slice(call.full_name().as_bytes());
    msg.push(0);
    conn.write_all(&msg).map_err(|e| {
        CallError::Failed(format!("sending the request to {}: {e}", socket.display()))
    })?;
    let mut code = [0u8; 1];
    match conn.read(&mut code) {
        Ok(1) => {}
        // The real client: the agent closing the trigger socket without an answer means
        // dom0 refused (qrexec-client-vm.c, "Request refused").
        Ok(_) => return Err(CallError::Refused("dom0 closed the request".into())),
        Err(e) => {
            return Err(CallError::Failed(format!(
                "reading dom0's answer from {}: {e}",
                socket.display()
            )))
        }
    }
    if code[0] == ALLOWED {
        return Ok(conn);
    }
    let mut message = String::new();
    let _ = conn.take(4096).read_to_string(&mut message);
    Err(if code[0] == REFUSED {
        CallError::Refused(message)
    } else {
        CallError::Failed(message)
    })
}
