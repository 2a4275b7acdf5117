//! The sync state database of one volume: for each path, what both sides held when they
//! were last known to be equal (storage: kind, size, mtime; cloud: size, modtime as rclone
//! reports it), and how far the storage journal has been processed.
//!
//! Format: `<state>/<volume>.db`, an append-only log of JSON lines. Each line is one record:
//! `{"p":PATH,"e":ENTRY}` sets a path, `{"p":PATH}` forgets it, `{"seq":N}` records the
//! journal position, `{"init":true}` marks the first complete sync. Appends are fsynced at
//! the end of each batch ([`StateDb::commit`]); a line torn by a crash is cut at open (it is
//! the last one, and every record is idempotent, so losing it only repeats work: the engine
//! compares contents before it calls anything a conflict). When the log holds far more lines
//! than live entries it is rewritten as a snapshot: written to `<volume>.db.tmp`, fsynced,
//! renamed over the log, and the directory fsynced.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What storage held at the last sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSig {
    /// true for a directory
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    pub size: u64,
    /// nanoseconds since the epoch
    pub mtime: i128,
}

/// What the cloud held at the last sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudSig {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    pub size: u64,
    pub modtime: String,
}

impl StoreSig {
    /// A directory: its existence is what syncs (its mtime moves with every child).
    pub const DIR: StoreSig = StoreSig {
        dir: true,
        size: 0,
        mtime: 0,
    };
}

impl CloudSig {
    /// A directory, as the agent records one it created in the cloud.
    pub const DIR: CloudSig = CloudSig {
        dir: true,
        size: 0,
        modtime: String::new(),
    };
}

/// One path's last synced state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub s: StoreSig,
    pub c: CloudSig,
}

#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<Entry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    init: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// the state database could not be read or written
    #[error("sync state database {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// a record in the middle of the log is damaged
    #[error("sync state database {path}: line {line} is damaged ({why}); move the file away to sync from scratch (nothing is lost: a first sync merges both sides)")]
    Corrupt {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

pub struct StateDb {
    path: PathBuf,
    log: BufWriter<File>,
    lines: usize,
    /// Records appended since the last commit.
    pending: usize,
    pub entries: BTreeMap<String, Entry>,
    /// The next storage journal entry to process; `None` before the first sync.
    pub seq: Option<u64>,
    /// The first full sync completed.
    pub initialized: bool,
}

/// Rewrite the log once it has this many times more lines than live entries (and at least
/// 4096 lines): bounded file size at a cost amortised over many appends.
const COMPACT_FACTOR: usize = 4;

impl StateDb {
    /// Opens (or creates) the database of `volume` in `dir`.
    pub fn open(dir: &Path, volume: &str) -> Result<StateDb, DbError> {
        let path = dir.join(format!("{volume}.db"));
        let io_err = |source| DbError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let mut entries = BTreeMap::new();
        let mut seq = None;
        let mut initialized = false;
        let mut lines = 0;
        let mut good_len: u64 = 0;
        match File::open(&path) {
            Ok(f) => {
                let mut r = BufReader::new(f);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    let n = r.read_until(b'\n', &mut buf).map_err(io_err)?;
                    if n == 0 {
                        break;
                    }
                    let complete = buf.last() == Some(&b'\n');
                    match serde_json::from_slice::<Record>(&buf) {
                        Ok(rec) if complete => {
                            lines += 1;
                            good_len += n as u64;
                            if let Some(p) = rec.p {
                                match rec.e {
                                    Some(e) => {
                                        entries.insert(p, e);
                                    }
                                    None => {
                                        entries.remove(&p);
                                    }
                                }
                            }
                            if let Some(s) = rec.seq {
                                seq = Some(s);
                            }
                            if rec.init == Some(true) {
                                initialized = true;
                            }
                        }
                        r2 => {
                            // A torn tail is the normal result of a crash; damage before
                            // the tail is not.
                            let mut rest = Vec::new();
                            io::Read::read_to_end(&mut r, &mut rest).map_err(io_err)?;
                            if !rest.is_empty() {
                                return Err(DbError::Corrupt {
                                    path,
                                    line: lines + 1,
                                    why: match r2 {
                                        Err(e) => e.to_string(),
                                        Ok(_) => "no line end".into(),
                                    },
                                });
                            }
                            tracing::warn!(path = %path.display(), "cut a torn last record of the sync state database (a crash during a write)");
                            break;
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let f = OpenOptions::new()
            .create(true)
            .append(false)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        f.set_len(good_len).map_err(io_err)?;
        let mut f = f;
        io::Seek::seek(&mut f, io::SeekFrom::Start(good_len)).map_err(io_err)?;
        let mut db = StateDb {
            path,
            log: BufWriter::with_capacity(256 * 1024, f),
            lines,
            pending: 0,
            entries,
            seq,
            initialized,
        };
        db.maybe_compact()?;
        Ok(db)
    }

    fn io_err(&self, source: io::Error) -> DbError {
        DbError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn append(&mut self, rec: &Record) -> Result<(), DbError> {
        let mut line = serde_json::to_vec(rec).expect("JSON");
        line.push(b'\n');
        self.log.write_all(&line).map_err(|e| self.io_err(e))?;
        self.lines += 1;
        self.pending += 1;
        Ok(())
    }

    /// Records appended since the last [`StateDb::commit`].
    pub fn pending_records(&self) -> usize {
        self.pending
    }

    pub fn get(&self, p: &str) -> Option<&Entry> {
        self.entries.get(p)
    }

    pub fn set(&mut self, p: &str, e: Entry) -> Result<(), DbError> {
        if self.entries.get(p) == Some(&e) {
            return Ok(());
        }
        self.append(&Record {
            p: Some(p.to_owned()),
            e: Some(e.clone()),
            seq: None,
            init: None,
        })?;
        self.entries.insert(p.to_owned(), e);
        Ok(())
    }

    pub fn remove(&mut self, p: &str) -> Result<(), DbError> {
        if self.entries.remove(p).is_none() {
            return Ok(());
        }
        self.append(&Record {
            p: Some(p.to_owned()),
            e: None,
            seq: None,
            init: None,
        })
    }

    pub fn set_seq(&mut self, seq: u64) -> Result<(), DbError> {
        if self.seq == Some(seq) {
            return Ok(());
        }
        self.seq = Some(seq);
        self.append(&Record {
            p: None,
            e: None,
            seq: Some(seq),
            init: None,
        })
    }

    pub fn set_initialized(&mut self) -> Result<(), DbError> {
        if self.initialized {
            return Ok(());
        }
        self.initialized = true;
        self.append(&Record {
            p: None,
            e: None,
            seq: None,
            init: Some(true),
        })
    }

    /// Makes every record so far durable.
    pub fn commit(&mut self) -> Result<(), DbError> {
        self.log.flush().map_err(|e| self.io_err(e))?;
        self.log.get_ref().sync_data().map_err(|e| self.io_err(e))?;
        self.pending = 0;
        self.maybe_compact()
    }

    fn maybe_compact(&mut self) -> Result<(), DbError> {
        if self.lines < 4096 || self.lines < COMPACT_FACTOR * (self.entries.len() + 1) {
            return Ok(());
        }
        self.log.flush().map_err(|e| self.io_err(e))?;
        let tmp = self.path.with_extension("db.tmp");
        let mut w = BufWriter::new(File::create(&tmp).map_err(|e| self.io_err(e))?);
        let mut n = 0;
        let mut put = |w: &mut BufWriter<File>, rec: &Record| -> io::Result<()> {
            serde_json::to_writer(&mut *w, rec)?;
            w.write_all(b"\n")?;
            n += 1;
            Ok(())
        };
        let r = (|| -> io::Result<()> {
            for (p, e) in &self.entries {
                put(
                    &mut w,
                    &Record {
                        p: Some(p.clone()),
                        e: Some(e.clone()),
                        seq: None,
                        init: None,
                    },
                )?;
            }
            put(
                &mut w,
                &Record {
                    p: None,
                    e: None,
                    seq: self.seq,
                    init: self.initialized.then_some(true),
                },
            )?;
            w.flush()?;
            w.get_ref().sync_all()
        })();
        r.map_err(|e| self.io_err(e))?;
        let f = w.into_inner().map_err(|e| self.io_err(e.into_error()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io_err(e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io_err(e))?;
        }
        let mut f = f;
        io::Seek::seek(&mut f, io::SeekFrom::End(0)).map_err(|e| self.io_err(e))?;
        self.log = BufWriter::with_capacity(256 * 1024, f);
        self.lines = n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(n: u64) -> Entry {
        Entry {
            s: StoreSig {
                dir: false,
                size: n,
                mtime: n as i128 * 1_000_000_007,
            },
            c: CloudSig {
                dir: false,
                size: n,
                modtime: format!("2026-01-01T00:00:{n:02}Z"),
            },
        }
    }

    #[test]
    fn survives_reopen_torn_tail_and_compaction() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut db = StateDb::open(d.path(), "work").unwrap();
            db.set("a", e(1)).unwrap();
            db.set("b/c", e(2)).unwrap();
            db.remove("a").unwrap();
            db.set_seq(7).unwrap();
            db.commit().unwrap();
            // Uncommitted: lost or kept, either is fine, but never corrupting.
            db.set("x", e(3)).unwrap();
        }
        // A crash in the middle of a line.
        let p = d.path().join("work.db");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"p\":\"torn\",\"e\":{\"s\"").unwrap();
        drop(f);
        let mut db = StateDb::open(d.path(), "work").unwrap();
        assert_eq!(db.seq, Some(7));
        assert!(db.get("a").is_none());
        assert_eq!(db.get("b/c"), Some(&e(2)));
        assert!(db.get("torn").is_none());
        db.set("after", e(4)).unwrap();
        db.commit().unwrap();
        let db2 = StateDb::open(d.path(), "work").unwrap();
        assert_eq!(
            db2.get("after"),
            Some(&e(4)),
            "appends after a cut tail are readable"
        );

        // Churn forces a compaction; the content stays.
        let mut db = db2;
        for i in 0..5000u64 {
            db.set("churn", e(i % 50)).unwrap();
        }
        db.set_initialized().unwrap();
        db.commit().unwrap();
        assert!(db.lines < 100, "compacted to {} lines", db.lines);
        let db3 = StateDb::open(d.path(), "work").unwrap();
        assert_eq!(db3.get("churn"), Some(&e(4999 % 50)));
        assert!(db3.initialized);
        assert_eq!(db3.seq, Some(7));
    }

    #[test]
    fn damage_before_the_tail_is_refused_with_the_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("v.db"),
            b"{\"seq\":1}\nGARBAGE\n{\"seq\":2}\n",
        )
        .unwrap();
        let err = StateDb::open(d.path(), "v").err().unwrap().to_string();
        assert!(err.contains("v.db") && err.contains("line 2"), "{err}");
    }
}
