//! Every role's `sandbox.json` parses, validates and compiles, so a typo in a role policy
//! fails here rather than when the agent starts in a qube.

use std::path::Path;

use cloudstore_sandbox::{check_role_policies, Policy, PLACEHOLDERS};

const ROLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../cloudstore/src/roles");

#[test]
fn every_role_policy_is_valid() {
    let policies = check_role_policies(Path::new(ROLES)).unwrap_or_else(|e| panic!("{e}"));
    let roles: Vec<&str> = policies.iter().map(Policy::role).collect();
    // The storage policy exists today; consumer and transfer add theirs when they are wired.
    assert!(roles.contains(&"storage"), "role policies found: {roles:?}");
    for p in &policies {
        for name in p.placeholders() {
            assert!(PLACEHOLDERS.iter().any(|(n, _)| *n == name), "{name}");
        }
        // The consumer worker keeps CAP_IPC_LOCK alone: mlockall(MCL_FUTURE) keeps its keys
        // and plaintext out of swap, and without it every allocation would count against
        // RLIMIT_MEMLOCK (see roles/consumer/sandbox.json).
        let allowed: &[caps::Capability] = if p.role() == "consumer" {
            &[caps::Capability::CAP_IPC_LOCK]
        } else {
            &[]
        };
        assert!(
            p.kept_capabilities() == allowed,
            "{}: keeps capabilities {:?}; say why in the report before relaxing this test",
            p.origin(),
            p.kept_capabilities()
        );
    }
}

#[test]
fn storage_policy_is_network_free_and_confined_to_its_directories() {
    let p = Policy::from_file(&Path::new(ROLES).join("storage/sandbox.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let placeholders: Vec<String> = p.placeholders().into_iter().collect();
    assert_eq!(placeholders, ["data_dir", "runtime_dir"]);
    assert!(p.landlock().require);
    assert_eq!(
        p.landlock().rules.len(),
        2,
        "only its data and runtime directories"
    );
}

#[test]
fn a_misnamed_role_file_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let role_dir = dir.path().join("transfer");
    std::fs::create_dir(&role_dir).unwrap();
    let text = std::fs::read_to_string(Path::new(ROLES).join("storage/sandbox.json")).unwrap();
    std::fs::write(role_dir.join("sandbox.json"), text).unwrap();
    let e = check_role_policies(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("transfer/sandbox.json") && e.contains("`role`"),
        "{e}"
    );

    std::fs::write(
        role_dir.join("sandbox.json"),
        "{\"role\": \"transfer\", \"arch\": 1}",
    )
    .unwrap();
    let e = check_role_policies(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("transfer/sandbox.json") && e.contains("`arch`"),
        "{e}"
    );
}
