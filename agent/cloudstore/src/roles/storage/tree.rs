//! `ListTree`: the whole tree of a volume in pre-order, siblings sorted by name bytes, in
//! pages resumable from the last path returned. Stateless between pages (the cursor is a
//! path), so a rescan survives a reconnection and concurrent changes only make it see the
//! tree as it is when each directory is read.

use cloudstore_protocol as wire;
use cloudstore_store::{self as store, ErrorKind, FileType, RelPath, Volume};

use super::convert;

struct Frame {
    dir: RelPath,
    names: Vec<String>,
    next: usize,
}

/// Sorted names of a directory; a directory removed meanwhile is empty.
fn names(vol: &Volume, dir: &RelPath) -> store::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cookie = 0;
    loop {
        let page = match vol.readdir(dir, cookie, store::MAX_READDIR_PAGE) {
            Ok(p) => p,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotDir) => break,
            Err(e) => return Err(e),
        };
        out.extend(page.entries.into_iter().map(|e| e.name));
        match page.next {
            Some(c) => cookie = c,
            None => break,
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn frame(vol: &Volume, dir: RelPath, after: Option<&str>) -> store::Result<Frame> {
    let names = names(vol, &dir)?;
    let next = after.map_or(0, |a| names.partition_point(|n| n.as_str() <= a));
    Ok(Frame { dir, names, next })
}

/// Up to `limit` entries following `after` (from the start if `None`).
pub fn page(vol: &Volume, after: Option<&RelPath>, limit: usize) -> store::Result<wire::TreePage> {
    let mut stack = Vec::new();
    match after {
        None => stack.push(frame(vol, RelPath::root(), None)?),
        Some(a) => {
            let mut dir = RelPath::root();
            for c in a.as_str().split('/') {
                stack.push(frame(vol, dir.clone(), Some(c))?);
                dir = dir.join(c).expect("a component of a valid path");
            }
            if vol.stat(a).is_ok_and(|at| at.kind == FileType::Dir) {
                stack.push(frame(vol, a.clone(), None)?);
            }
        }
    }
    let mut entries = Vec::new();
    while entries.len() < limit.max(1) {
        let Some(top) = stack.last_mut() else { break };
        let Some(name) = top.names.get(top.next).cloned() else {
            stack.pop();
            continue;
        };
        top.next += 1;
        let child = top.dir.join(&name).expect("a listed name is one component");
        let attr = match vol.stat(&child) {
            Ok(a) => a,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if attr.kind == FileType::Dir {
            stack.push(frame(vol, child.clone(), None)?);
        }
        entries.push(wire::TreeEntry {
            path: child.as_str().to_owned(),
            attr: convert::attr(&attr),
        });
    }
    while stack.last().is_some_and(|f| f.next >= f.names.len()) {
        stack.pop();
    }
    let next = if stack.is_empty() {
        None
    } else {
        entries.last().map(|e: &wire::TreeEntry| e.path.clone())
    };
    Ok(wire::TreePage { entries, next })
}
