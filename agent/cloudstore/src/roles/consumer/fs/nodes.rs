//! The inode table: which ciphertext path each inode the kernel knows stands for.
//!
//! A node keeps its names as (parent inode, ciphertext entry, plaintext name); its path is
//! built from the parent chain when needed, so renaming a directory moves its whole
//! subtree at no cost. Hard links share one node, found by the storage's inode number
//! (gocryptfs shows the backing inode numbers too, so `ls -i` matches).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use cloudstore_format::DirIv;
use cloudstore_protocol::{Attr, FileType};

pub(crate) const ROOT: u64 = fuser::FUSE_ROOT_ID;

/// The most entries a directory's known listing holds; a larger directory is asked about
/// each name again (the set costs about 100 bytes per entry).
pub(crate) const MAX_KNOWN_ENTRIES: usize = 65_536;

#[derive(Clone, Debug)]
pub(crate) struct Name {
    pub parent: u64,
    /// The directory entry on storage (a `gocryptfs.longname.*` hash for long names).
    pub cname: String,
    pub pname: Vec<u8>,
}

/// What is cached of a file's ciphertext, under the file's I/O lock.
#[derive(Default, Debug)]
pub(crate) struct FileCache {
    pub clen: Option<u64>,
    pub header: Option<[u8; cloudstore_format::HEADER_LEN]>,
    /// (size, mtime) last seen at open: unchanged means the kernel may keep its pages.
    pub seen: Option<(u64, i64, u32)>,
    /// Storage's attributes of the file (or directory) as the last change made here left
    /// them (a write; an entry created or removed in a directory), for the stat the kernel
    /// sends after each such change; taken by it, dropped by any other request about it and
    /// by every change pushed from elsewhere.
    pub fresh: Option<Attr>,
    /// The last `fresh` attributes given out, with the count they were given under: a
    /// chown makes the kernel ask for the attributes (to clear set-id bits) and then send
    /// the change, which storage does not keep and so may be answered with them as long
    /// as nothing was counted since.
    pub given: Option<(Attr, u64)>,
    /// Counts the requests and drops that may change the attributes: an answer carrying
    /// attributes is kept only if nothing was counted since its request was sent.
    pub changes: u64,
    /// The whole ciphertext of a small file as a read-only open brought it
    /// (`OPEN_HEAD`), for the first read; dropped with the attributes.
    pub content: Option<Held>,
    /// The [`change_clock`] when a change of the file was last sent or answered: a listing
    /// asked for before then may predate that change.
    pub touched: u64,
    /// (size, mtime) of the file `content` is, when it came with a lookup (`STAT_HEAD`)
    /// rather than an open: a read-only open then needs no round trip.
    pub looked_up: Option<(u64, i64, u32)>,
    /// The attributes storage last gave for the file, kept across the changes made here
    /// (unlike `fresh`) and dropped with a change made elsewhere: the base from which an
    /// attribute change sent behind a write predicts what it will leave (behind.rs).
    pub base: Option<Attr>,
    /// The file's last ciphertext block as this mount last wrote it, when partial, with
    /// its offset: the next append rewrites that block and finds it here instead of asking
    /// storage, so it can go behind the write before it (behind.rs). Valid while it ends
    /// at `clen`; dropped at the release of a handle that wrote.
    pub tail: Option<(u64, Vec<u8>)>,
    /// Counts [`FileState::forget_cached`]: what an operation learnt of the ciphertext
    /// (`clen`, `header`, `tail`) before a count may be of a version since replaced, and is
    /// not put back after it ([`FileCache::put_back`]).
    pub forgotten: u64,
    /// Counts the changes of the content asked from here (writes, truncations), under the
    /// file's I/O lock held alone.
    pub content_changed: u64,
}

/// Orders the changes made here against the listings asked for: storage serves a
/// connection's requests concurrently, so the attributes in a listing reflect a change only
/// if the change was answered before the listing was asked for.
static CHANGE_CLOCK: AtomicU64 = AtomicU64::new(1);

/// The present time of the change clock (see [`FileCache::touched`]).
pub(crate) fn change_clock() -> u64 {
    CHANGE_CLOCK.load(Ordering::SeqCst)
}

fn tick() -> u64 {
    CHANGE_CLOCK.fetch_add(1, Ordering::SeqCst) + 1
}

impl FileCache {
    /// Moves with every change of the content, made here or pushed from elsewhere: what
    /// was read of the file under one count may be out of date under another (ahead.rs).
    pub(crate) fn content_count(&self) -> u64 {
        self.forgotten.wrapping_add(self.content_changed)
    }

    /// Puts back what an operation that started at `forgotten` (the count then) learnt of
    /// the ciphertext, unless the cache was forgotten meanwhile: a change pushed from
    /// elsewhere while a read or write ran must not be undone by it, or the next write
    /// would encrypt blocks for the old header into the new file. Returns whether it was.
    pub(crate) fn put_back(
        &mut self,
        forgotten: u64,
        clen: u64,
        header: Option<[u8; cloudstore_format::HEADER_LEN]>,
        tail: Option<(u64, Vec<u8>)>,
    ) -> bool {
        if self.forgotten != forgotten {
            return false;
        }
        self.clen = Some(clen);
        self.header = header;
        self.tail = tail;
        true
    }

    /// Drops what rests on the attributes being known (kept attributes, content held from
    /// an open) and counts the change; returns the new count.
    fn attrs_unknown(&mut self) -> u64 {
        self.fresh = None;
        self.given = None;
        self.content = None;
        self.looked_up = None;
        self.touched = tick();
        self.changes += 1;
        self.changes
    }
}

/// Bytes held for a later read, counted against a budget shared by the mount.
pub(crate) struct Held {
    bytes: Vec<u8>,
    len: usize,
    budget: Arc<AtomicUsize>,
}

impl Held {
    /// Holds `bytes` if the budget (`max` bytes over the mount) allows.
    pub(crate) fn new(bytes: Vec<u8>, budget: &Arc<AtomicUsize>, max: usize) -> Option<Held> {
        let len = bytes.len();
        let before = budget.fetch_add(len, Ordering::Relaxed);
        let held = Held {
            bytes,
            len,
            budget: budget.clone(),
        };
        (before + len <= max).then_some(held)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The file header at the start of the content, if it is that long.
    pub(crate) fn header(&self) -> Option<[u8; cloudstore_format::HEADER_LEN]> {
        self.bytes
            .get(..cloudstore_format::HEADER_LEN)?
            .try_into()
            .ok()
    }

    pub(crate) fn into_bytes(mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.len, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({} bytes)", self.len)
    }
}

/// Per-file state shared by every handle: reads share the lock, writes (read-modify-write
/// of partial blocks) hold it alone.
#[derive(Default, Debug)]
pub(crate) struct FileState {
    pub io: RwLock<()>,
    pub cache: Mutex<FileCache>,
    pub behind: Mutex<super::behind::WriteBehind>,
    /// For a directory: the entries whose unlink is on its way to storage (unlinks.rs),
    /// and the signal that one was answered.
    pub unlinking: Mutex<super::unlinks::Unlinking>,
    pub unlinked: std::sync::Condvar,
}

impl FileState {
    fn cache(&self) -> MutexGuard<'_, FileCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Nothing cached of the file is to be trusted (a write of it failed, or it was changed
    /// elsewhere).
    pub(crate) fn forget_cached(&self) {
        let mut c = self.cache();
        c.clen = None;
        c.header = None;
        c.seen = None;
        c.base = None;
        c.tail = None;
        c.forgotten += 1;
        c.attrs_unknown();
    }

    /// Changes made elsewhere may have been missed: nothing is known of the attributes.
    pub(crate) fn forget_attrs(&self) {
        let mut c = self.cache();
        c.base = None;
        c.attrs_unknown();
    }

    /// See [`FileCache::base`].
    pub(crate) fn base_attr(&self) -> Option<Attr> {
        self.cache().base.clone()
    }

    pub(crate) fn keep_base(&self, attr: Attr) {
        self.cache().base = Some(attr);
    }

    /// A request that may change the attributes is on its way: whatever they were, they
    /// are not known any more. Returns what [`FileState::keep_attr`] needs to keep the
    /// attributes its answer carries.
    pub(crate) fn attrs_changing(&self) -> u64 {
        self.cache().attrs_unknown()
    }

    /// Keeps the attributes an answer carried, unless anything may have changed them since
    /// its request was sent (`stamp` from [`FileState::attrs_changing`] then).
    pub(crate) fn keep_attr(&self, attr: Attr, stamp: u64) {
        let mut c = self.cache();
        if c.changes == stamp {
            c.base = Some(attr.clone());
            c.fresh = Some(attr);
        }
    }

    /// The count of changes so far (see [`FileState::attrs_changing`]), without counting one.
    pub(crate) fn changes(&self) -> u64 {
        self.cache().changes
    }

    /// An answer about the file came: a listing asked for before it may predate it.
    pub(crate) fn answered(&self) {
        self.cache().touched = tick();
    }

    /// Whether a change of the file was sent or answered since `clock` ([`change_clock`]).
    pub(crate) fn touched_since(&self, clock: u64) -> bool {
        self.cache().touched > clock
    }

    /// The attributes the last change made here left, without taking them: those kept, or
    /// those last given out if nothing was counted since.
    pub(crate) fn known_attr(&self) -> Option<Attr> {
        let c = self.cache();
        if let Some(a) = &c.fresh {
            return Some(a.clone());
        }
        match &c.given {
            Some((a, at)) if *at == c.changes => Some(a.clone()),
            _ => None,
        }
    }

    pub(crate) fn take_attr(&self) -> Option<Attr> {
        let mut c = self.cache();
        let a = c.fresh.take()?;
        c.given = Some((a.clone(), c.changes));
        Some(a)
    }

    /// The attributes for a change storage does not keep (ownership): those kept, or those
    /// last given out if nothing was counted since.
    pub(crate) fn attr_for_unkept_change(&self) -> Option<Attr> {
        let mut c = self.cache();
        if let Some(a) = c.fresh.take() {
            return Some(a);
        }
        match c.given.take() {
            Some((a, at)) if at == c.changes => Some(a),
            _ => None,
        }
    }
}

pub(crate) struct Node {
    pub kind: FileType,
    /// Every name; the last one is used to build the path.
    pub names: Vec<Name>,
    pub lookups: u64,
    /// The storage's inode number (0 for the root).
    pub sino: u64,
    pub diriv: Option<DirIv>,
    pub file: Arc<FileState>,
    /// Every entry of this directory on storage, while known for certain: a directory this
    /// mount made starts empty, and each change made here keeps the set right, so a name
    /// not in it is answered "no such file" without asking storage (creating a file starts
    /// with that lookup). Dropped for good on any change made elsewhere, a failed change
    /// here, or a lost connection.
    pub entries: Option<HashSet<String>>,
}

pub(crate) struct Nodes {
    pub map: HashMap<u64, Node>,
    pub children: HashMap<(u64, String), u64>,
    by_sino: HashMap<u64, u64>,
    next: u64,
}

impl Nodes {
    pub(crate) fn new() -> Nodes {
        let mut map = HashMap::new();
        map.insert(
            ROOT,
            Node {
                kind: FileType::Dir,
                names: Vec::new(),
                lookups: 1,
                sino: 0,
                diriv: None,
                file: Arc::default(),
                entries: None,
            },
        );
        Nodes {
            map,
            children: HashMap::new(),
            by_sino: HashMap::new(),
            next: 1 << 62,
        }
    }

    /// The inode number shown for storage inode `sino` (the root's number is 1).
    pub(crate) fn stable_ino(sino: u64) -> u64 {
        if sino <= ROOT || sino >= 1 << 62 {
            // Reserved for the root and the fallback counter: map into the top range.
            (1 << 63) | sino
        } else {
            sino
        }
    }

    /// The ciphertext path and the plaintext path (for messages) of `ino`; `None` when a
    /// name on the way is gone (the file was unlinked while open).
    pub(crate) fn paths(&self, ino: u64) -> Option<(String, String)> {
        let mut c: Vec<&str> = Vec::new();
        let mut p: Vec<String> = Vec::new();
        let mut cur = ino;
        let mut depth = 0;
        while cur != ROOT {
            let n = self.map.get(&cur)?;
            let name = n.names.last()?;
            c.push(&name.cname);
            p.push(String::from_utf8_lossy(&name.pname).into_owned());
            cur = name.parent;
            depth += 1;
            // PATH_MAX / 2: a longer chain can only be a cycle (a bug), not a real path.
            if depth > 2048 {
                return None;
            }
        }
        c.reverse();
        p.reverse();
        Some((c.join("/"), format!("/{}", p.join("/"))))
    }

    pub(crate) fn cpath(&self, ino: u64) -> Option<String> {
        self.paths(ino).map(|(c, _)| c)
    }

    /// The plaintext path for messages, or a placeholder naming the inode.
    pub(crate) fn shown(&self, ino: u64) -> String {
        self.paths(ino)
            .map(|(_, p)| p)
            .unwrap_or_else(|| format!("<deleted file, inode {ino}>"))
    }

    /// Records that `parent/cname` is the storage object `sino` of `kind`, counting one
    /// kernel lookup; returns the inode.
    pub(crate) fn register(
        &mut self,
        parent: u64,
        cname: &str,
        pname: &[u8],
        kind: FileType,
        sino: u64,
    ) -> u64 {
        self.entry_added(parent, cname);
        let key = (parent, cname.to_owned());
        if let Some(&ino) = self.children.get(&key) {
            if let Some(n) = self.map.get_mut(&ino) {
                if n.sino == sino && n.kind == kind {
                    n.lookups += 1;
                    return ino;
                }
            }
            self.detach(parent, cname);
        }
        let name = Name {
            parent,
            cname: cname.to_owned(),
            pname: pname.to_vec(),
        };
        // A second name of a file already known: a hard link.
        if let Some(&ino) = self.by_sino.get(&sino) {
            if let Some(n) = self.map.get_mut(&ino) {
                if n.kind == kind && kind != FileType::Dir {
                    n.names.push(name);
                    n.lookups += 1;
                    self.children.insert(key, ino);
                    return ino;
                }
            }
        }
        // The storage's inode number when it is free, so a file keeps its number after the
        // kernel forgot it (tar compares inode numbers across its extraction; gocryptfs
        // shows the backing numbers too); a counter above 2^62 when it is taken (a number
        // reused by storage while the kernel still holds the old file).
        let stable = Self::stable_ino(sino);
        let ino = if self.map.contains_key(&stable) {
            self.next += 1;
            self.next
        } else {
            stable
        };
        self.map.insert(
            ino,
            Node {
                kind,
                names: vec![name],
                lookups: 1,
                sino,
                diriv: None,
                file: Arc::default(),
                entries: None,
            },
        );
        self.children.insert(key, ino);
        self.by_sino.insert(sino, ino);
        ino
    }

    /// Removes the name `parent/cname` (unlink, rmdir, replaced by a rename). The node
    /// stays while the kernel knows it; with no name left it is only reachable by handle.
    pub(crate) fn detach(&mut self, parent: u64, cname: &str) -> Option<u64> {
        if let Some(set) = self.map.get_mut(&parent).and_then(|n| n.entries.as_mut()) {
            set.remove(cname);
        }
        let ino = self.children.remove(&(parent, cname.to_owned()))?;
        if let Some(n) = self.map.get_mut(&ino) {
            n.names
                .retain(|x| !(x.parent == parent && x.cname == cname));
            if n.names.is_empty() {
                let s = n.sino;
                if self.by_sino.get(&s) == Some(&ino) {
                    self.by_sino.remove(&s);
                }
            }
        }
        Some(ino)
    }

    /// Moves the name `from` to `to` (a rename), replacing whatever `to` named.
    pub(crate) fn rename(&mut self, from: (u64, &str), to: (u64, &str), to_pname: &[u8]) {
        self.detach(to.0, to.1);
        if let Some(set) = self.map.get_mut(&from.0).and_then(|n| n.entries.as_mut()) {
            set.remove(from.1);
        }
        self.entry_added(to.0, to.1);
        if let Some(ino) = self.children.remove(&(from.0, from.1.to_owned())) {
            if let Some(n) = self.map.get_mut(&ino) {
                if let Some(x) = n
                    .names
                    .iter_mut()
                    .find(|x| x.parent == from.0 && x.cname == from.1)
                {
                    x.parent = to.0;
                    x.cname = to.1.to_owned();
                    x.pname = to_pname.to_vec();
                }
                // The renamed name becomes the one paths are built from.
                if let Some(i) = n
                    .names
                    .iter()
                    .position(|x| x.parent == to.0 && x.cname == to.1)
                {
                    let nm = n.names.remove(i);
                    n.names.push(nm);
                }
            }
            self.children.insert((to.0, to.1.to_owned()), ino);
        }
    }

    /// Swaps two names (RENAME_EXCHANGE).
    pub(crate) fn exchange(&mut self, a: (u64, &str, &[u8]), b: (u64, &str, &[u8])) {
        let ia = self.children.remove(&(a.0, a.1.to_owned()));
        let ib = self.children.remove(&(b.0, b.1.to_owned()));
        let mut fix = |ino: Option<u64>, from: (u64, &str), to: (u64, &str, &[u8])| {
            if let Some(ino) = ino {
                if let Some(n) = self.map.get_mut(&ino) {
                    if let Some(x) = n
                        .names
                        .iter_mut()
                        .find(|x| x.parent == from.0 && x.cname == from.1)
                    {
                        x.parent = to.0;
                        x.cname = to.1.to_owned();
                        x.pname = to.2.to_vec();
                    }
                }
            }
        };
        fix(ia, (a.0, a.1), b);
        fix(ib, (b.0, b.1), a);
        if let Some(i) = ia {
            self.children.insert((b.0, b.1.to_owned()), i);
        }
        if let Some(i) = ib {
            self.children.insert((a.0, a.1.to_owned()), i);
        }
    }

    /// The kernel dropped `n` lookups of `ino`; a node it no longer knows is removed
    /// (looked up again by name when needed).
    pub(crate) fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let gone = match self.map.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(node) = self.map.remove(&ino) {
                for nm in node.names {
                    if self.children.get(&(nm.parent, nm.cname.clone())) == Some(&ino) {
                        self.children.remove(&(nm.parent, nm.cname));
                    }
                }
                if self.by_sino.get(&node.sino) == Some(&ino) {
                    self.by_sino.remove(&node.sino);
                }
            }
        }
    }

    fn entry_added(&mut self, dir: u64, cname: &str) {
        if let Some(n) = self.map.get_mut(&dir) {
            if let Some(set) = n.entries.as_mut() {
                set.insert(cname.to_owned());
                if set.len() > MAX_KNOWN_ENTRIES {
                    n.entries = None;
                }
            }
        }
    }

    /// `dir` was just made by this mount: it is empty, and its listing is known from here.
    pub(crate) fn know_entries(&mut self, dir: u64) {
        if let Some(n) = self.map.get_mut(&dir) {
            n.entries = Some(HashSet::new());
        }
    }

    /// Whether `dir/cname` is known not to exist (see [`Node::entries`]).
    pub(crate) fn known_absent(&self, dir: u64, cname: &str) -> bool {
        self.map
            .get(&dir)
            .and_then(|n| n.entries.as_ref())
            .is_some_and(|set| !set.contains(cname))
    }

    /// `dir` may hold entries this mount did not see being made.
    pub(crate) fn unknown_entries(&mut self, dir: u64) {
        if let Some(n) = self.map.get_mut(&dir) {
            n.entries = None;
        }
    }

    /// Resolves a ciphertext path to the inodes along it that the kernel knows:
    /// (parent of the last component if known, the entry itself if known).
    pub(crate) fn resolve(&self, cpath: &str) -> (Option<u64>, Option<u64>) {
        if cpath.is_empty() {
            return (None, Some(ROOT));
        }
        let mut cur = ROOT;
        let comps: Vec<&str> = cpath.split('/').collect();
        for (i, c) in comps.iter().enumerate() {
            match self.children.get(&(cur, (*c).to_owned())) {
                Some(&ino) => {
                    if i + 1 == comps.len() {
                        return (Some(cur), Some(ino));
                    }
                    cur = ino;
                }
                None => {
                    return (
                        if i + 1 == comps.len() {
                            Some(cur)
                        } else {
                            None
                        },
                        None,
                    )
                }
            }
        }
        (None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_operation_learnt_is_not_put_back_over_a_change_from_elsewhere() {
        let state = FileState::default();
        let header = Some([7u8; cloudstore_format::HEADER_LEN]);
        let tail = || Some((4114u64, vec![1u8; 100]));

        let started = state.cache().forgotten;
        assert!(state.cache().put_back(started, 4214, header, tail()));
        let c = state.cache();
        assert_eq!(
            (c.clen, c.header, c.tail.clone()),
            (Some(4214), header, tail())
        );
        drop(c);

        // A read starts, the file is replaced from elsewhere, the read ends.
        let started = state.cache().forgotten;
        state.forget_cached();
        assert!(!state.cache().put_back(started, 4214, header, tail()));
        let c = state.cache();
        assert_eq!((c.clen, c.header, c.tail.clone()), (None, None, None));
        drop(c);

        // Attribute changes made here do not count: a write that set times meanwhile
        // still keeps what it learnt.
        let started = state.cache().forgotten;
        state.attrs_changing();
        state.forget_attrs();
        assert!(state.cache().put_back(started, 8228, header, None));
        assert_eq!(state.cache().clen, Some(8228));
    }

    #[test]
    fn paths_follow_renames_of_ancestors_and_hard_links_share_a_node() {
        let mut n = Nodes::new();
        let d = n.register(ROOT, "D", b"dir", FileType::Dir, 100);
        let f = n.register(d, "F", b"file", FileType::File, 101);
        assert_eq!(n.paths(f).unwrap(), ("D/F".into(), "/dir/file".into()));
        // The storage inode number is the inode number, stable across forget.
        assert_eq!(f, 101);
        n.rename((ROOT, "D"), (ROOT, "E"), b"moved");
        assert_eq!(n.paths(f).unwrap(), ("E/F".into(), "/moved/file".into()));
        let l = n.register(ROOT, "L", b"link", FileType::File, 101);
        assert_eq!(l, f, "a second name of the same storage inode");
        assert_eq!(n.cpath(f).unwrap(), "L");
        n.detach(ROOT, "L");
        assert_eq!(n.cpath(f).unwrap(), "E/F", "the other name remains");
        n.detach(d, "F");
        assert!(n.cpath(f).is_none(), "unlinked: reachable by handle only");
        assert_eq!(n.resolve("E/F"), (Some(d), None));
        assert_eq!(n.resolve("E"), (Some(ROOT), Some(d)));
    }

    #[test]
    fn a_known_listing_follows_every_change_made_through_the_table() {
        let mut n = Nodes::new();
        let d = n.register(ROOT, "D", b"dir", FileType::Dir, 100);
        let e = n.register(ROOT, "E", b"other", FileType::Dir, 200);
        assert!(
            !n.known_absent(d, "x"),
            "nothing is known before know_entries"
        );
        n.know_entries(d);
        n.know_entries(e);
        assert!(n.known_absent(d, "x"));
        n.register(d, "x", b"x", FileType::File, 101);
        assert!(!n.known_absent(d, "x"), "a registered entry exists");
        n.rename((d, "x"), (e, "y"), b"y");
        assert!(
            n.known_absent(d, "x") && !n.known_absent(e, "y"),
            "renamed across"
        );
        n.detach(e, "y");
        assert!(n.known_absent(e, "y"), "detached");
        // Forgotten by the kernel, an entry still exists on storage.
        n.register(d, "z", b"z", FileType::File, 102);
        let z = n.children[&(d, "z".to_owned())];
        n.forget(z, 1);
        assert!(!n.known_absent(d, "z"));
        n.unknown_entries(d);
        assert!(!n.known_absent(d, "anything"), "unknown again");
        for i in 0..=MAX_KNOWN_ENTRIES {
            n.register(e, &format!("f{i}"), b"f", FileType::File, 1000 + i as u64);
        }
        assert!(!n.known_absent(e, "never-made"), "too many entries to keep");
    }

    #[test]
    fn exchange_swaps_names_and_reused_storage_numbers_get_fresh_inodes() {
        let mut n = Nodes::new();
        let a = n.register(ROOT, "A", b"a", FileType::File, 7);
        let b = n.register(ROOT, "B", b"b", FileType::Dir, 8);
        n.exchange((ROOT, "A", b"a"), (ROOT, "B", b"b"));
        assert_eq!(n.cpath(a).unwrap(), "B");
        assert_eq!(n.cpath(b).unwrap(), "A");
        // Storage reuses number 7 for a new file while the kernel still holds the old one.
        n.detach(ROOT, "B");
        let c = n.register(ROOT, "C", b"c", FileType::File, 7);
        assert_ne!(c, a);
        assert!(c >= 1 << 62);
        // Once the kernel forgets a node, its number is free again.
        n.forget(a, 1);
        assert!(!n.map.contains_key(&a));
        // A name now pointing at another object replaces the stale entry.
        let d = n.register(ROOT, "C", b"c", FileType::Dir, 9);
        assert_eq!(d, 9);
        assert_eq!(n.cpath(c), None);
        assert_eq!(
            Nodes::stable_ino(1),
            (1 << 63) | 1,
            "never the root's number"
        );
    }
}
