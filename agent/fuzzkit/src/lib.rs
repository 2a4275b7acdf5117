//! Bounded, deterministic mutation fuzzing on stable Rust.
//!
//! cloudstore's parsers (gocryptfs config and file header, protocol frames and request
//! dispatch) each expose a fuzz target `fn(&[u8])` that must never panic. This harness feeds
//! a target its checked-in corpus and then mutants of it, from a fixed seed, so a CI run is
//! repeatable and bounded; a longer run is one environment variable away:
//!
//! - `CLOUDSTORE_FUZZ_ITERS`   mutants per target (default [`DEFAULT_ITERATIONS`])
//! - `CLOUDSTORE_FUZZ_SECONDS` stop after this many seconds even if iterations remain
//! - `CLOUDSTORE_FUZZ_SEED`    starting seed (default fixed, so CI failures reproduce)
//!
//! An input that panics is written to `target/fuzz-crashes/<target>-<seed>-<n>` and the run
//! fails naming that file; copy it into the corpus once the bug is fixed, so it stays fixed.
#![forbid(unsafe_code)]

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Enough mutants to walk every corpus entry through each mutation kind many times while
/// keeping one target's CI run to a few seconds in a debug build.
pub const DEFAULT_ITERATIONS: u64 = 20_000;

const DEFAULT_SEED: u64 = 0x00C1_0D57_0E5E_ED01;

/// Inputs larger than this are cut back: parsers reject big inputs on a size check early, so
/// growing mutants past it only slows the run without reaching new code.
const MAX_INPUT_LEN: usize = 256 * 1024;

/// What a finished run covered, for the test's own assertions and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub corpus_entries: usize,
    pub mutants: u64,
}

/// Runs `target` on every file in `corpus_dir` and on mutants of them. Panics (failing the
/// calling test) if the corpus is missing or empty, or if the target panics on any input.
pub fn run(name: &str, corpus_dir: &Path, target: impl Fn(&[u8])) -> RunSummary {
    run_bounded(name, corpus_dir, u64::MAX, target)
}

/// [`run`] with at most `max_iterations` mutants by default, for a target whose every input
/// costs real I/O (the environment's `CLOUDSTORE_FUZZ_ITERS` still raises it for a long run).
pub fn run_bounded(
    name: &str,
    corpus_dir: &Path,
    max_iterations: u64,
    target: impl Fn(&[u8]),
) -> RunSummary {
    let corpus = load_corpus(corpus_dir);
    assert!(
        !corpus.is_empty(),
        "fuzz target {name}: corpus {} is empty; check in at least one valid input",
        corpus_dir.display()
    );
    let iterations =
        env_u64("CLOUDSTORE_FUZZ_ITERS").unwrap_or_else(|| DEFAULT_ITERATIONS.min(max_iterations));
    let deadline =
        env_u64("CLOUDSTORE_FUZZ_SECONDS").map(|s| Instant::now() + Duration::from_secs(s));
    let seed = env_u64("CLOUDSTORE_FUZZ_SEED").unwrap_or(DEFAULT_SEED);

    for input in &corpus {
        call_guarded(name, seed, 0, input, &target);
    }
    let mut rng = XorShift::new(seed);
    let mut mutants = 0;
    for n in 1..=iterations {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let base = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let mut input = base.clone();
        // Stacking a few mutations reaches states one mutation alone cannot (e.g. a length
        // field made consistent with a body that was also changed).
        for _ in 0..=rng.below(4) {
            mutate(&mut input, other, &mut rng);
        }
        input.truncate(MAX_INPUT_LEN);
        call_guarded(name, seed, n, &input, &target);
        mutants += 1;
    }
    RunSummary {
        corpus_entries: corpus.len(),
        mutants,
    }
}

fn call_guarded(name: &str, seed: u64, n: u64, input: &[u8], target: &impl Fn(&[u8])) {
    if panic::catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let path = save_crash(name, seed, n, input);
        panic!(
            "fuzz target {name} panicked on input {n} (seed {seed:#x}); input saved to {}",
            path.display()
        );
    }
}

fn save_crash(name: &str, seed: u64, n: u64, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashes");
    let _ = fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}-{seed:x}-{n}"));
    let _ = fs::write(&path, input);
    path
}

fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let entries = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read fuzz corpus {}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    // Sorted so the seed alone decides the run, whatever order the directory lists in.
    paths.sort();
    paths
        .iter()
        .filter(|p| p.is_file())
        .map(|p| fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display())))
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

/// Values that sit on the edges parsers get wrong: zero, one, sign boundaries, all-ones.
const INTERESTING_U32: [u32; 9] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

fn mutate(input: &mut Vec<u8>, other: &[u8], rng: &mut XorShift) {
    match rng.below(8) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = rng.next() as u8;
        }
        2 if input.len() >= 4 => {
            let i = rng.below(input.len() - 3);
            let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
            let bytes = if rng.below(2) == 0 {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            input[i..i + 4].copy_from_slice(&bytes);
        }
        3 if !input.is_empty() => {
            let start = rng.below(input.len());
            let end = start + rng.below(input.len() - start + 1);
            input.drain(start..end);
        }
        4 => {
            let at = rng.below(input.len() + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(at..at, bytes);
        }
        5 if !input.is_empty() => {
            let start = rng.below(input.len());
            let end = start + rng.below((input.len() - start).min(64) + 1);
            let chunk = input[start..end].to_vec();
            let at = rng.below(input.len() + 1);
            input.splice(at..at, chunk);
        }
        6 if !other.is_empty() => {
            let cut = rng.below(input.len() + 1);
            let from = rng.below(other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        _ => {
            let len = input.len();
            input.truncate(rng.below(len + 1));
        }
    }
}

/// xorshift64*: tiny, seedable, and good enough to pick mutations.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_deterministic_for_a_seed() {
        let mut a = XorShift::new(7);
        let mut b = XorShift::new(7);
        let (mut x, mut y) = (b"hello world".to_vec(), b"hello world".to_vec());
        for _ in 0..1000 {
            mutate(&mut x, b"other", &mut a);
            mutate(&mut y, b"other", &mut b);
        }
        assert_eq!(x, y);
    }

    #[test]
    fn a_panicking_target_fails_the_run_and_saves_the_input() {
        let dir = std::env::temp_dir().join(format!("fuzzkit-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("seed"), b"abcdef").unwrap();
        let result = panic::catch_unwind(|| {
            run("selftest", &dir, |data| {
                assert!(data.len() != 3, "length three")
            });
        });
        let message = *result
            .expect_err("a target that panics must fail the run")
            .downcast::<String>()
            .unwrap();
        assert!(
            message.contains("fuzz target selftest panicked"),
            "{message}"
        );
        let saved = message.rsplit("saved to ").next().unwrap();
        assert_eq!(fs::read(saved).unwrap().len(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mutants_are_produced_and_counted() {
        let dir = std::env::temp_dir().join(format!("fuzzkit-count-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("seed"), b"0123456789").unwrap();
        let seen = std::cell::RefCell::new(std::collections::HashSet::new());
        let summary = run("count", &dir, |d| {
            seen.borrow_mut().insert(d.to_vec());
        });
        assert_eq!(summary.corpus_entries, 1);
        assert!(summary.mutants > 0);
        assert!(
            seen.borrow().len() > 100,
            "mutations should produce many distinct inputs"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
