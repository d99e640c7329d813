//! The pool: allocation, release and queries over the store.

use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use redb::backends::InMemoryBackend;
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTableMetadata, WriteTransaction};

use crate::span::Span;
use crate::store::{
    self, check, store_err, AllocCol, KeyCol, Tables, M_CURSOR, M_FAMILY, M_SCHEMA, SCHEMA_VERSION,
};
use crate::{Allocation, Error, Family, Key, MAX_META_LEN};

/// The page cache redb may use. The database holds at most a few hundred allocations on a real
/// node, so redb's 1 GiB default would only ever be a ceiling, but a small one states intent.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// What the in-memory pool calls its database in messages.
const IN_MEMORY: &str = "<in-memory>";

/// The pod addresses of one node's subnet of one address family, allocated durably:
/// a `Pool` (IPv4, `Pool<Ipv4Net>`) or a [`Pool6`] (IPv6, `Pool<Ipv6Net>`). A
/// dual-stack node keeps one of each, in two database files.
///
/// Every mutation is one redb write transaction, committed with immediate durability before the
/// call returns, so a crash at any moment leaves either the old state or the new one. Write
/// transactions are serialized by redb, so the pool can be shared between threads (it is
/// `Send + Sync`; wrap it in an `Arc`) and concurrent allocations never collide. Only one process may
/// have the database file open at a time; a second [`Pool::open`] of the same file fails.
///
/// Addresses are handed out round-robin, as CNI host-local does: a persisted cursor remembers the
/// last address allocated without a request, and the next search starts after it and wraps, so a
/// released address is not reused until the rest of the subnet has been gone through.
///
/// If a commit fails with [`Error::Store`], redb may refuse further writes until the database is
/// reopened: drop the pool and open it again.
#[derive(Debug)]
pub struct Pool<N: Family = Ipv4Net> {
    db: Database,
    span: Span<N>,
    location: PathBuf,
}

/// A pool of IPv6 addresses.
pub type Pool6 = Pool<Ipv6Net>;

/// Read-only views of the allocation tables, in one read transaction.
type ReadTables<N> = (
    ReadOnlyTable<KeyCol, AllocCol<N>>,
    ReadOnlyTable<<N as Family>::Int, KeyCol>,
);

impl<N: Family> Pool<N> {
    /// Opens, or creates, the database file at `path` for the pod subnet `subnet`.
    ///
    /// Creates the parent directory when missing. The subnet must have a prefix length from
    /// [`crate::MIN_PREFIX_LEN`] to [`crate::MAX_PREFIX_LEN`] and no host bits set. When the
    /// database already records another subnet, the new one is adopted only if no address is
    /// allocated; otherwise the open fails with [`Error::SubnetMismatch`]. The whole file is
    /// checked on open: redb's page checksums and this crate's invariants (see
    /// [`Pool::verify`]), so a damaged file is reported, never trusted.
    pub fn open(path: &Path, subnet: N) -> Result<Pool<N>, Error> {
        let span = Span::new(subnet)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                op: "create the database directory",
                source,
            })?;
        }
        let created = !path.exists();
        let db = builder()
            .create(path)
            .map_err(store_err(path, "open the database"))?;
        let pool = Pool::init(db, span, path.to_path_buf())?;
        if created {
            // The commits are durable, but a new file's directory entry is not until its
            // directory is synced too.
            sync_parent(path)?;
        }
        Ok(pool)
    }

    /// Opens the database file at `path` for the subnet it records, if there is such a
    /// file: how a node that leases its subnet from the cluster store remembers which
    /// one it held. `None` if there is no file, or it records no subnet yet. The file is
    /// checked as [`Pool::open`] checks it.
    pub fn open_recorded(path: &Path) -> Result<Option<Pool<N>>, Error> {
        if !path.exists() {
            return Ok(None);
        }
        let db = builder()
            .create(path)
            .map_err(store_err(path, "open the database"))?;
        // Any span will do to read the meta table; the recorded one replaces it.
        let any = N::build(0, N::MAX_PREFIX_LEN).expect("the family's narrowest subnet");
        let probe = Pool {
            db,
            span: Span::new(any.trunc())?,
            location: path.to_path_buf(),
        };
        let Some(stored) = probe.write(|t| {
            probe.check_family(t)?;
            t.subnet()
        })?
        else {
            return Ok(None);
        };
        let span = Span::new(stored).map_err(|e| Error::Corrupt {
            db: path.to_path_buf(),
            detail: format!("meta: {e}"),
        })?;
        let pool = Pool { span, ..probe };
        pool.write(|t| pool.prepare(t))?;
        Ok(Some(pool))
    }

    /// Creates an empty pool held in memory only, for tests.
    pub fn in_memory(subnet: N) -> Result<Pool<N>, Error> {
        let span = Span::new(subnet)?;
        let location = PathBuf::from(IN_MEMORY);
        let db = builder()
            .create_with_backend(InMemoryBackend::new())
            .map_err(store_err(&location, "create the database"))?;
        Pool::init(db, span, location)
    }

    fn init(db: Database, span: Span<N>, location: PathBuf) -> Result<Pool<N>, Error> {
        let pool = Pool { db, span, location };
        pool.write(|t| pool.prepare(t))?;
        Ok(pool)
    }

    /// Refuses a database of the other family.
    fn check_family(&self, t: &Tables<'_, N>) -> Result<(), Error> {
        match t.family()? {
            found if found == N::NUMBER => Ok(()),
            found => Err(Error::WrongFamily {
                db: self.location.clone(),
                found,
                wanted: N::NUMBER,
            }),
        }
    }

    /// Initializes a new database, or checks (and later: migrates) an existing one.
    fn prepare(&self, t: &mut Tables<'_, N>) -> Result<(), Error> {
        if t.meta(M_SCHEMA)?.is_some() {
            self.check_family(t)?;
        }
        match t.meta(M_SCHEMA)? {
            None => {
                let len = |r: Result<u64, redb::StorageError>| {
                    r.map_err(store_err(&self.location, "read table sizes"))
                };
                if len(t.by_key.len())? + len(t.by_ip.len())? + len(t.meta.len())? > 0 {
                    return Err(t.corrupt("tables hold data but no schema version".into()));
                }
                t.set_meta(M_SCHEMA, SCHEMA_VERSION)?;
                if N::NUMBER != 4 {
                    t.set_meta(M_FAMILY, N::NUMBER)?;
                }
                return t.set_subnet(self.span.net());
            }
            Some(found) if found > SCHEMA_VERSION => {
                return Err(Error::UnsupportedSchema {
                    db: self.location.clone(),
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
            Some(0) => return Err(t.corrupt("schema version 0".into())),
            // Version 1 is current; migrations from older versions will go here.
            Some(_) => {}
        }
        let stored = t
            .subnet()?
            .ok_or_else(|| t.corrupt("meta records no subnet".into()))?;
        let stored_span = Span::new(stored).map_err(|e| t.corrupt(format!("meta: {e}")))?;
        let live = check(&self.location, &t.by_key, &t.by_ip, &stored_span)?;
        if stored != self.span.net() {
            if live > 0 {
                return Err(Error::SubnetMismatch {
                    db: self.location.clone(),
                    stored: stored.into(),
                    requested: self.span.net().into(),
                    live,
                });
            }
            t.set_subnet(self.span.net())?;
            t.clear_wide(M_CURSOR)?;
        }
        Ok(())
    }

    /// The pod subnet.
    pub fn subnet(&self) -> N {
        self.span.net()
    }

    /// The pods' default gateway: the subnet's first address, never allocated.
    pub fn gateway(&self) -> N::Addr {
        self.span.gateway()
    }

    /// How many addresses the subnet can hand out (all but network, gateway and, in
    /// IPv4, broadcast).
    pub fn capacity(&self) -> u128 {
        self.span.capacity()
    }

    /// Gives `key` an address, or returns the one it already holds.
    ///
    /// Idempotent: when `key` already holds an address, that allocation is returned unchanged
    /// (its stored `meta` included; use [`Pool::update_meta`] to change it), unless `requested`
    /// names another address, which is [`Error::KeyHoldsOther`]. A `requested` address is given
    /// if it is in the subnet ([`Error::OutOfRange`]), not reserved ([`Error::Reserved`]) and
    /// free ([`Error::AlreadyAllocated`]); it does not move the round-robin cursor. Without one,
    /// the first free address after the cursor is given, wrapping around, and the cursor moves
    /// to it; [`Error::Exhausted`] when none is free.
    pub fn allocate(
        &self,
        key: &Key,
        requested: Option<N::Addr>,
        meta: &[u8],
    ) -> Result<Allocation<N::Addr>, Error> {
        self.reserve(key, requested, meta)?.commit()
    }

    /// Decides the allocation [`Pool::allocate`] would make, in a write transaction
    /// left open: its address is known before it is durable, so a caller can set the
    /// address up while [`Reservation::commit`] writes it to disk (a commit is an
    /// fsync, the slowest step of most allocations). Dropping the reservation rolls it
    /// back. Other writers wait until it is committed or dropped.
    pub fn reserve(
        &self,
        key: &Key,
        requested: Option<N::Addr>,
        meta: &[u8],
    ) -> Result<Reservation<'_, N>, Error> {
        key.validate()?;
        check_meta(key, meta)?;
        if let Some(ip) = requested {
            self.span.check_usable(ip)?;
        }
        let (allocation, txn) = self.write_open(|t| {
            if let Some((held, stored_meta)) = t.lookup(key)? {
                return match requested {
                    Some(r) if N::int_of(r) != held => Err(Error::KeyHoldsOther {
                        key: key.clone(),
                        existing: N::addr(held).into(),
                        requested: r.into(),
                    }),
                    _ => Ok(self.allocation(key.clone(), held, stored_meta)),
                };
            }
            let ip = match requested {
                Some(ip) => {
                    if let Some(owner) = t.owner(N::int_of(ip))? {
                        return Err(Error::AlreadyAllocated {
                            ip: ip.into(),
                            owner,
                        });
                    }
                    N::int_of(ip)
                }
                None => {
                    let cursor = t.cursor()?;
                    let ip = store::next_free(&t.by_ip, &self.span, cursor)
                        .map_err(store_err(&self.location, "search a free address"))?
                        .ok_or(Error::Exhausted {
                            subnet: self.span.net().into(),
                            capacity: self.span.capacity(),
                        })?;
                    t.set_wide(M_CURSOR, ip)?;
                    ip
                }
            };
            t.insert(key, ip, meta)?;
            Ok(self.allocation(key.clone(), ip, meta.to_vec()))
        })?;
        Ok(Reservation {
            pool: self,
            txn,
            allocation,
        })
    }

    /// Frees `key`'s address and returns what it held; `Ok(None)` when it held none.
    pub fn release(&self, key: &Key) -> Result<Option<Allocation<N::Addr>>, Error> {
        self.write(|t| {
            Ok(t.remove(key)?
                .map(|(ip, meta)| self.allocation(key.clone(), ip, meta)))
        })
    }

    /// Frees `ip`, whoever holds it, and returns what it held; `Ok(None)` when it was free.
    pub fn release_ip(&self, ip: N::Addr) -> Result<Option<Allocation<N::Addr>>, Error> {
        let n = N::int_of(ip);
        self.write(|t| {
            let Some(key) = t.owner(n)? else {
                return Ok(None);
            };
            let (held, meta) = t.remove(&key)?.ok_or_else(|| {
                t.corrupt(format!(
                    "by_ip gives {ip} to {key}, which by_key does not know"
                ))
            })?;
            if held != n {
                return Err(t.corrupt(format!(
                    "by_ip gives {ip} to {key}, but by_key says it holds {}",
                    N::addr(held)
                )));
            }
            Ok(Some(self.allocation(key, n, meta)))
        })
    }

    /// Replaces the metadata stored with `key`'s allocation and returns the allocation;
    /// [`Error::NotFound`] when `key` holds no address.
    pub fn update_meta(&self, key: &Key, meta: &[u8]) -> Result<Allocation<N::Addr>, Error> {
        check_meta(key, meta)?;
        self.write(|t| {
            let (ip, old) = t
                .lookup(key)?
                .ok_or_else(|| Error::NotFound { key: key.clone() })?;
            if old != meta {
                t.insert(key, ip, meta)?;
            }
            Ok(self.allocation(key.clone(), ip, meta.to_vec()))
        })
    }

    /// Releases, in one transaction, every allocation whose key `keep` rejects, and returns them
    /// (for CNI GC: `keep` says whether the attachment is still valid).
    pub fn retain(&self, keep: impl Fn(&Key) -> bool) -> Result<Vec<Allocation<N::Addr>>, Error> {
        self.write(|t| {
            let all =
                store::all::<N>(&t.by_key).map_err(store_err(&self.location, "read by_key"))?;
            let mut released = Vec::new();
            for (key, ip, meta) in all {
                if keep(&key) {
                    continue;
                }
                t.remove(&key)?;
                released.push(self.allocation(key, ip, meta));
            }
            Ok(released)
        })
    }

    /// Returns `key`'s allocation, if it holds one.
    pub fn get(&self, key: &Key) -> Result<Option<Allocation<N::Addr>>, Error> {
        let (by_key, _) = self.read()?;
        let found = store::lookup::<N>(&by_key, key).map_err(self.err("read by_key"))?;
        Ok(found.map(|(ip, meta)| self.allocation(key.clone(), ip, meta)))
    }

    /// Returns the allocation holding `ip`, if any.
    pub fn get_by_ip(&self, ip: N::Addr) -> Result<Option<Allocation<N::Addr>>, Error> {
        let (by_key, by_ip) = self.read()?;
        let n = N::int_of(ip);
        let Some(key) = store::owner::<N>(&by_ip, n).map_err(self.err("read by_ip"))? else {
            return Ok(None);
        };
        match store::lookup::<N>(&by_key, &key).map_err(self.err("read by_key"))? {
            Some((held, meta)) if held == n => Ok(Some(self.allocation(key, n, meta))),
            _ => Err(Error::Corrupt {
                db: self.location.clone(),
                detail: format!("by_ip gives {ip} to {key}, but by_key disagrees"),
            }),
        }
    }

    /// The number of allocations, without reading them.
    pub fn len(&self) -> Result<u64, Error> {
        use redb::ReadableTableMetadata;
        let (by_key, _) = self.read()?;
        by_key.len().map_err(self.err("count by_key"))
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Returns every allocation, ordered by key.
    pub fn list(&self) -> Result<Vec<Allocation<N::Addr>>, Error> {
        let (by_key, _) = self.read()?;
        let all = store::all::<N>(&by_key).map_err(self.err("read by_key"))?;
        Ok(all
            .into_iter()
            .map(|(key, ip, meta)| self.allocation(key, ip, meta))
            .collect())
    }

    /// The last address handed out by the round-robin search (the next search starts after it).
    pub fn last_allocated(&self) -> Result<Option<N::Addr>, Error> {
        let txn = self
            .db
            .begin_read()
            .map_err(self.err("begin a read transaction"))?;
        let meta = txn
            .open_table(store::META)
            .map_err(self.err("open table meta"))?;
        let read = |name: &str| {
            let value = meta.get(name).map_err(self.err("read meta"))?;
            Ok::<_, Error>(value.map(|g| u128::from(g.value())))
        };
        let hi = read(&format!("{M_CURSOR}{}", store::HI))?.unwrap_or(0);
        let cursor = read(M_CURSOR)?.map(|lo| lo | hi << 64);
        Ok(cursor
            .filter(|&c| N::build(c, N::bits()).is_some())
            .map(N::addr))
    }

    /// Checks the database's invariants: `by_key` and `by_ip` describe the same one-to-one
    /// mapping, and every allocated address is a usable address of the subnet. Returns the
    /// number of allocations, or [`Error::Corrupt`] naming the first violation.
    pub fn verify(&self) -> Result<u64, Error> {
        let (by_key, by_ip) = self.read()?;
        check(&self.location, &by_key, &by_ip, &self.span)
    }

    fn allocation(&self, key: Key, ip: u128, meta: Vec<u8>) -> Allocation<N::Addr> {
        Allocation {
            key,
            ip: N::addr(ip),
            prefix_len: self.span.net().parts().1,
            gateway: self.span.gateway(),
            meta,
        }
    }

    fn err<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> Error + '_ {
        store_err(&self.location, op)
    }

    /// Opens the allocation tables in a new read transaction (a consistent snapshot).
    fn read(&self) -> Result<ReadTables<N>, Error> {
        let txn = self
            .db
            .begin_read()
            .map_err(self.err("begin a read transaction"))?;
        Ok((
            txn.open_table(N::BY_KEY)
                .map_err(self.err("open table by_key"))?,
            txn.open_table(N::BY_IP)
                .map_err(self.err("open table by_ip"))?,
        ))
    }

    /// Runs `f` in one write transaction: committed if `f` changed something and succeeded,
    /// rolled back otherwise.
    fn write<T>(&self, f: impl FnOnce(&mut Tables<'_, N>) -> Result<T, Error>) -> Result<T, Error> {
        let (out, txn) = self.write_open(f)?;
        if let Some(txn) = txn {
            txn.commit().map_err(self.err("commit"))?;
        }
        Ok(out)
    }

    /// Runs `f` in a new write transaction and returns the transaction still open if
    /// `f` changed something; rolls it back if `f` changed nothing or failed.
    fn write_open<T>(
        &self,
        f: impl FnOnce(&mut Tables<'_, N>) -> Result<T, Error>,
    ) -> Result<(T, Option<WriteTransaction>), Error> {
        let txn = self
            .db
            .begin_write()
            .map_err(self.err("begin a write transaction"))?;
        let (out, dirty) = {
            let mut tables = Tables::open(&txn, &self.location)?;
            let out = f(&mut tables)?;
            (out, tables.dirty)
        };
        if dirty {
            Ok((out, Some(txn)))
        } else {
            txn.abort().map_err(self.err("roll back"))?;
            Ok((out, None))
        }
    }
}

/// An allocation decided but not yet durable; see [`Pool::reserve`].
#[must_use = "a reservation is rolled back unless committed"]
pub struct Reservation<'p, N: Family = Ipv4Net> {
    pool: &'p Pool<N>,
    /// `None` when the key already held its address: nothing to commit.
    txn: Option<WriteTransaction>,
    allocation: Allocation<N::Addr>,
}

impl<N: Family> Reservation<'_, N> {
    /// The allocation this reservation makes.
    pub fn allocation(&self) -> &Allocation<N::Addr> {
        &self.allocation
    }

    /// Makes the allocation durable, with the pool's immediate durability.
    pub fn commit(self) -> Result<Allocation<N::Addr>, Error> {
        if let Some(txn) = self.txn {
            txn.commit().map_err(self.pool.err("commit"))?;
        }
        Ok(self.allocation)
    }
}

impl<N: Family> std::fmt::Debug for Reservation<'_, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("allocation", &self.allocation)
            .field("pending", &self.txn.is_some())
            .finish()
    }
}

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(CACHE_BYTES);
    b.set_check_integrity_on_open(true);
    b
}

/// Flushes the directory holding `path` to disk.
fn sync_parent(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            op: "sync the database directory",
            source,
        })
}

fn check_meta(key: &Key, meta: &[u8]) -> Result<(), Error> {
    if meta.len() > MAX_META_LEN {
        return Err(Error::MetaTooLarge {
            key: key.clone(),
            len: meta.len(),
            max: MAX_META_LEN,
        });
    }
    Ok(())
}
