//! Role sandboxes: capability drop, landlock and seccomp built from per-role policy data.
