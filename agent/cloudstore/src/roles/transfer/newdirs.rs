//! Directories new to the cloud, each filled in the partial area and moved into place with
//! one server-side directory move.
//!
//! Moving finished uploads into place one by one costs the cloud a request or more per
//! file (webdav: a MOVE and the PROPFINDs and MKCOL around it), as much as the upload
//! itself for small files. A directory the cloud does not have yet can instead be filled
//! under a directory of the partial area by any number of upload calls, and renamed into
//! place as a whole once every file of it has arrived (rclone's `DirMove`). An interrupted
//! pass leaves such a directory in the partial area, never half of it under its own name.
//!
//! A directory takes part if its own uploads are few and small enough (`MAX_FILES`,
//! `MAX_BYTES`: what a kill costs to upload again) and no new directory beneath it is too
//! big (that one is created first, and so must its parents be). A directory moves only
//! after the new directory above it is in place, so each move is a rename into an existing
//! parent. This module is the bookkeeping alone (no I/O); engine.rs does the uploads and
//! moves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use super::engine::parent_dir;
use super::statedb::StoreSig;

/// At most this many files and bytes uploaded into one new directory wait for each
/// other; a larger directory is created first and its files moved in one by one as before.
pub const MAX_FILES: usize = 4096;
pub const MAX_BYTES: u64 = 64 << 20;

/// A file stored complete in the partial area, waiting for its directory to move.
#[derive(Debug, Clone)]
pub struct Sent {
    pub path: String,
    /// The size the pass planned with (for its report).
    pub size: u64,
    /// Where it is in the cloud now.
    pub partial: String,
    /// What storage sent.
    pub s: StoreSig,
}

/// A new directory whose every file has arrived and whose new parent (if any) is in place.
#[derive(Debug)]
pub struct Ready {
    pub dir: String,
    pub partial: String,
    pub sig: StoreSig,
    pub sent: Vec<Sent>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    /// Uploads into it are under way.
    Filling,
    /// Complete; waits for the new directory above it.
    Waiting,
    /// Handed out as [`Ready`].
    Moving,
    Done,
}

#[derive(Debug)]
struct NewDir {
    partial: String,
    sig: StoreSig,
    files_left: usize,
    sent: Vec<Sent>,
    state: State,
    /// Complete directories beneath it, to move once it is in place.
    waiting: Vec<String>,
}

/// The new directories of one pass.
#[derive(Debug, Default)]
pub struct NewDirs {
    dirs: Mutex<BTreeMap<String, NewDir>>,
}

impl NewDirs {
    /// Chooses among `fresh` (directories to create in the cloud, which has nothing there)
    /// those to fill and move whole, given the pass's `uploads` (path, size). Returns them
    /// and the fresh directories left to be created first, parents before children. A fresh
    /// directory above one that cannot move whole is created first too, so that every
    /// moved directory lands in a parent that exists.
    pub fn choose(
        fresh: &BTreeMap<String, StoreSig>,
        uploads: &[(String, u64)],
        mut partial_dir: impl FnMut() -> String,
    ) -> (NewDirs, Vec<String>) {
        let mut load: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
        for (p, size) in uploads {
            let d = parent_dir(p);
            if fresh.contains_key(d) {
                let l = load.entry(d).or_default();
                l.0 += 1;
                l.1 += size;
            }
        }
        let mut created_first: BTreeSet<&str> = BTreeSet::new();
        for d in fresh.keys() {
            let (files, bytes) = load.get(d.as_str()).copied().unwrap_or_default();
            if files > MAX_FILES || bytes > MAX_BYTES {
                let mut a = d.as_str();
                while fresh.contains_key(a) && created_first.insert(a) {
                    a = parent_dir(a);
                    if a.is_empty() {
                        break;
                    }
                }
            }
        }
        let mut dirs = BTreeMap::new();
        for (d, sig) in fresh {
            if created_first.contains(d.as_str()) {
                continue;
            }
            dirs.insert(
                d.clone(),
                NewDir {
                    partial: partial_dir(),
                    sig: *sig,
                    files_left: load.get(d.as_str()).map_or(0, |l| l.0),
                    sent: Vec::new(),
                    state: State::Filling,
                    waiting: Vec::new(),
                },
            );
        }
        let first = created_first.into_iter().map(str::to_owned).collect();
        (
            NewDirs {
                dirs: Mutex::new(dirs),
            },
            first,
        )
    }

    #[cfg(test)]
    fn contains(&self, dir: &str) -> bool {
        self.dirs.lock().unwrap().contains_key(dir)
    }

    /// The partial directory to upload `dir`'s files into, while they are still wanted
    /// there.
    pub fn partial_of(&self, dir: &str) -> Option<String> {
        let dirs = self.dirs.lock().unwrap();
        dirs.get(dir)
            .filter(|d| d.state == State::Filling)
            .map(|d| d.partial.clone())
    }

    /// The directories with no files to wait for, to start with.
    pub fn start(&self) -> Vec<Ready> {
        let mut dirs = self.dirs.lock().unwrap();
        let empty: Vec<String> = dirs
            .iter()
            .filter(|(_, d)| d.state == State::Filling && d.files_left == 0)
            .map(|(p, _)| p.clone())
            .collect();
        empty
            .into_iter()
            .filter_map(|p| complete(&mut dirs, &p))
            .collect()
    }

    /// `counted` files of `dir` are over: `sent` arrived, the others failed (or went
    /// another way). Returns what can move now.
    pub fn arrived(&self, dir: &str, sent: Vec<Sent>, counted: usize) -> Vec<Ready> {
        let mut dirs = self.dirs.lock().unwrap();
        let Some(d) = dirs.get_mut(dir) else {
            return Vec::new();
        };
        debug_assert!(d.state == State::Filling && d.files_left >= counted);
        d.files_left = d.files_left.saturating_sub(counted);
        d.sent.extend(sent);
        if d.files_left > 0 {
            return Vec::new();
        }
        complete(&mut dirs, dir).into_iter().collect()
    }

    /// `dir` has moved (or failed to): the complete directories beneath it that waited for
    /// it can move now.
    pub fn moved(&self, dir: &str) -> Vec<Ready> {
        let mut dirs = self.dirs.lock().unwrap();
        let waiting = match dirs.get_mut(dir) {
            Some(d) => {
                d.state = State::Done;
                std::mem::take(&mut d.waiting)
            }
            None => return Vec::new(),
        };
        waiting
            .into_iter()
            .filter_map(|w| complete(&mut dirs, &w))
            .collect()
    }

    /// Directories not moved (the pass stopped early), with the partial directories they
    /// leave behind.
    pub fn unfinished(&self) -> Vec<(String, String)> {
        self.dirs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, d)| d.state != State::Done)
            .map(|(p, d)| (p.clone(), d.partial.clone()))
            .collect()
    }
}

/// `dir` has all its files: handed out if no new directory above it is still to move,
/// else queued behind the nearest one.
fn complete(dirs: &mut BTreeMap<String, NewDir>, dir: &str) -> Option<Ready> {
    let mut a = dir;
    while !a.is_empty() {
        a = parent_dir(a);
        if let Some(up) = dirs.get_mut(a) {
            if up.state != State::Done {
                up.waiting.push(dir.to_owned());
                dirs.get_mut(dir).expect("known").state = State::Waiting;
                return None;
            }
        }
    }
    let d = dirs.get_mut(dir).expect("known");
    d.state = State::Moving;
    Some(Ready {
        dir: dir.to_owned(),
        partial: d.partial.clone(),
        sig: d.sig,
        sent: std::mem::take(&mut d.sent),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(dirs: &[&str]) -> BTreeMap<String, StoreSig> {
        dirs.iter()
            .map(|d| (d.to_string(), StoreSig::DIR))
            .collect()
    }

    fn uploads(files: &[(&str, u64)]) -> Vec<(String, u64)> {
        files.iter().map(|(p, s)| (p.to_string(), *s)).collect()
    }

    fn sent(path: &str) -> Sent {
        Sent {
            path: path.to_owned(),
            size: 1,
            partial: format!("partial/{path}"),
            s: StoreSig {
                dir: false,
                size: 1,
                mtime: 0,
            },
        }
    }

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("p{n}")
        }
    }

    #[test]
    fn a_directory_moves_once_all_its_files_arrived_and_after_the_new_one_above_it() {
        let (nd, first) = NewDirs::choose(
            &fresh(&["a", "a/b", "a/b/c", "a/empty"]),
            &uploads(&[
                ("a/1", 10),
                ("a/2", 10),
                ("a/b/1", 5),
                ("a/b/c/1", 5),
                ("x", 1),
            ]),
            counter(),
        );
        assert!(first.is_empty());
        assert!(nd.contains("a/b") && !nd.contains("x"));
        // An empty directory is complete from the start, but waits for its new parent.
        assert!(nd.start().is_empty());
        // The deepest finishes first: it waits for a/b, which waits for a.
        assert!(nd.arrived("a/b/c", vec![sent("a/b/c/1")], 1).is_empty());
        assert!(nd.arrived("a/b", vec![sent("a/b/1")], 1).is_empty());
        assert_eq!(
            nd.partial_of("a/b"),
            None,
            "complete: no more uploads into it"
        );
        assert!(nd.partial_of("a").is_some());
        assert!(
            nd.arrived("a", vec![sent("a/1")], 1).is_empty(),
            "a/2 is still out"
        );
        let r = nd.arrived("a", vec![], 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].dir, "a");
        assert_eq!(r[0].sent.len(), 1, "only what arrived moves");
        let mut next: Vec<String> = nd.moved("a").into_iter().map(|r| r.dir).collect();
        next.sort();
        assert_eq!(next, ["a/b", "a/empty"]);
        let r = nd.moved("a/b");
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].dir.as_str(), r[0].sent[0].path.as_str()),
            ("a/b/c", "a/b/c/1")
        );
        assert!(nd.moved("a/b/c").is_empty());
        nd.moved("a/empty");
        assert!(nd.unfinished().is_empty());
    }

    #[test]
    fn a_directory_too_big_to_wait_is_created_first_with_the_new_ones_above_it() {
        let (nd, first) = NewDirs::choose(
            &fresh(&["a", "a/big", "a/big/small", "a/other"]),
            &uploads(&[("a/big/1", MAX_BYTES), ("a/big/2", 1), ("a/other/1", 1)]),
            counter(),
        );
        assert_eq!(first, ["a", "a/big"]);
        assert!(nd.contains("a/big/small") && nd.contains("a/other"));
        // Their parents exist once created: nothing to wait for.
        let mut started: Vec<String> = nd.start().into_iter().map(|r| r.dir).collect();
        started.sort();
        assert_eq!(started, ["a/big/small"]);
        assert_eq!(nd.arrived("a/other", vec![sent("a/other/1")], 1).len(), 1);
        assert_eq!(nd.unfinished().len(), 2, "handed out, not yet moved");
    }

    #[test]
    fn too_many_files_count_like_too_many_bytes() {
        let many: Vec<(String, u64)> = (0..=MAX_FILES).map(|i| (format!("d/{i}"), 1)).collect();
        let (nd, first) = NewDirs::choose(&fresh(&["d"]), &many, counter());
        assert_eq!(first, ["d"]);
        assert!(!nd.contains("d"));
    }
}
