//! The confinement and filesystem-operation tests again, in a process where `openat2` answers
//! ENOSYS — as it does on kernels before 5.6 and inside systemd-nspawn, whose container filter
//! does not know the syscall. The store must then walk paths one component at a time under
//! the same rules: never across a symlink, never above the volume root.

// Each included file declares `mod common;`; two copies of the helpers are harmless.
#![allow(clippy::duplicate_mod)]

#[path = "confinement.rs"]
mod confinement;
#[path = "fsops.rs"]
mod fsops;

use std::collections::BTreeMap;

/// Runs before `main`, while the process has one thread, so that every test thread libtest
/// starts later inherits the filter.
#[used]
#[link_section = ".init_array"]
static BLOCK_OPENAT2: extern "C" fn() = block_openat2;

extern "C" fn block_openat2() {
    let filter = seccompiler::SeccompFilter::new(
        BTreeMap::from([(libc::SYS_openat2, vec![])]),
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::ENOSYS as u32),
        std::env::consts::ARCH
            .try_into()
            .expect("a seccompiler target arch"),
    )
    .expect("a filter for openat2");
    let program: seccompiler::BpfProgram = filter.try_into().expect("the filter compiles");
    seccompiler::apply_filter(&program).expect("the filter installs");
}

#[test]
fn openat2_really_is_missing_here() {
    // SAFETY: openat2 with a null `how` is harmless: the kernel would answer EFAULT; the
    // filter answers first.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c".".as_ptr(),
            std::ptr::null::<libc::open_how>(),
            0usize,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOSYS)
    );
}
