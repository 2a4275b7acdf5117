//! What happens when the seccomp allowlist traps: name the syscall, then end the process.
//!
//! The allowlists trap (SECCOMP_RET_TRAP) rather than kill: the kernel does not run the
//! refused call either way, but a trap lets this handler write which syscall the role's
//! policy is missing to stderr (the journal under systemd) before the process exits with
//! [`SECCOMP_VIOLATION_EXIT_CODE`]. Firecracker does the same (src/vmm/src/signal_handler.rs:
//! log the syscall number, exit with a dedicated code). A policy gap is a bug to fix in the
//! policy, so the role never carries on after one.

use std::sync::OnceLock;

/// Exit status of a process whose sandbox refused a syscall: 128 + SIGSYS (31), what a
/// shell shows for a process killed by SIGSYS, so the two read alike.
pub const SECCOMP_VIOLATION_EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// si_code of a SIGSYS raised by seccomp (include/uapi/asm-generic/siginfo.h).
const SYS_SECCOMP: libc::c_int = 1;

/// The role name printed by the handler; set once, before the filter goes in.
static ROLE: OnceLock<String> = OnceLock::new();

/// Offsets of `_sigsys._syscall` and `_sigsys._arch` in `siginfo_t` on 64-bit Linux: three
/// ints (si_signo, si_errno, si_code) padded to 16 bytes, then `void *_call_addr`
/// (include/uapi/asm-generic/siginfo.h). The libc crate exposes no accessor for them.
#[cfg(target_pointer_width = "64")]
const SYSCALL_OFFSET: usize = 24;
#[cfg(target_pointer_width = "64")]
const ARCH_OFFSET: usize = 28;

/// Installs the SIGSYS handler for the whole process.
pub(crate) fn install(role: &str) -> std::io::Result<()> {
    let _ = ROLE.set(role.to_string());
    // SAFETY: a zeroed sigaction is a valid starting value; we set the handler, flags and an
    // empty mask before passing it to the kernel, and `on_sigsys` has the SA_SIGINFO signature.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Fixed-size, allocation-free message buffer: a signal handler must not allocate.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64, base: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(v % base) as usize];
            v /= base;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"cloudstore sandbox");
    if let Some(role) = ROLE.get() {
        line.push(b" (role ");
        line.push(role.as_bytes());
        line.push(b")");
    }
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo_t; for si_code
    // SYS_SECCOMP the `_sigsys` member is the one filled in, at the offsets above.
    let (code, nr, arch) = unsafe {
        let p = info as *const u8;
        let code = (*info).si_code;
        let nr = std::ptr::read_unaligned(p.add(SYSCALL_OFFSET) as *const i32);
        let arch = std::ptr::read_unaligned(p.add(ARCH_OFFSET) as *const u32);
        (code, nr, arch)
    };
    if code == SYS_SECCOMP {
        line.push(b": seccomp refused syscall ");
        line.push_num(nr as u64, 10);
        line.push(b" (audit arch 0x");
        line.push_num(arch as u64, 16);
        line.push(b"); the role's sandbox.json does not allow it; exiting\n");
    } else {
        line.push(b": SIGSYS not raised by seccomp; exiting\n");
    }
    // SAFETY: write(2) and exit_group(2) are async-signal-safe; the buffer is valid for
    // `len` bytes. The process ends here, so no Rust state is observed afterwards.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_exit_group, SECCOMP_VIOLATION_EXIT_CODE);
    }
}
