//! The on-disk layout and the table operations every pool operation is built from.
//!
//! Layout, schema version 1:
//! - `by_key`: `(container_id, ifname)` → `(ip as u32, meta bytes)`
//! - `by_ip`: `ip as u32` → `(container_id, ifname)`
//! - `meta`: `&str` → `u64`, with the keys [`M_SCHEMA`], [`M_SUBNET_ADDR`], [`M_SUBNET_PREFIX`]
//!   and (once something was allocated without a requested address) [`M_CURSOR`].
//!
//! `by_key` and `by_ip` are two views of one bijection; every write changes both in the same
//! write transaction, and [`check`] verifies it.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::span::Span;
use crate::{Error, Key};

/// The key column: `(container_id, ifname)`.
pub(crate) type KeyCol = (&'static str, &'static str);
/// The `by_key` value column: `(ip, meta)`.
pub(crate) type AllocCol = (u32, &'static [u8]);

pub(crate) const BY_KEY: TableDefinition<'static, KeyCol, AllocCol> =
    TableDefinition::new("by_key");
pub(crate) const BY_IP: TableDefinition<'static, u32, KeyCol> = TableDefinition::new("by_ip");
pub(crate) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

/// The layout version this build writes and reads.
pub(crate) const SCHEMA_VERSION: u64 = 1;
pub(crate) const M_SCHEMA: &str = "schema_version";
pub(crate) const M_SUBNET_ADDR: &str = "subnet_addr";
pub(crate) const M_SUBNET_PREFIX: &str = "subnet_prefix";
/// The last address handed out by the round-robin search.
pub(crate) const M_CURSOR: &str = "last_allocated";

/// Wraps a store error with the database and the operation.
pub(crate) fn store_err<'a, E: Into<redb::Error>>(
    db: &'a Path,
    op: &'static str,
) -> impl FnOnce(E) -> Error + 'a {
    move |e| Error::Store {
        db: db.to_path_buf(),
        op,
        source: Box::new(e.into()),
    }
}

fn key_col(key: &Key) -> (&str, &str) {
    (key.container_id.as_str(), key.ifname.as_str())
}

fn key_of((c, i): (&str, &str)) -> Key {
    Key::new(c, i)
}

/// Reads one key's `(ip, meta)`.
pub(crate) fn lookup(
    by_key: &impl ReadableTable<KeyCol, AllocCol>,
    key: &Key,
) -> Result<Option<(u32, Vec<u8>)>, redb::StorageError> {
    Ok(by_key.get(key_col(key))?.map(|g| {
        let (ip, meta) = g.value();
        (ip, meta.to_vec())
    }))
}

/// Reads which key holds `ip`.
pub(crate) fn owner(
    by_ip: &impl ReadableTable<u32, KeyCol>,
    ip: u32,
) -> Result<Option<Key>, redb::StorageError> {
    Ok(by_ip.get(ip)?.map(|g| key_of(g.value())))
}

/// Reads every allocation as `(key, ip, meta)`, in key order.
pub(crate) fn all(
    by_key: &impl ReadableTable<KeyCol, AllocCol>,
) -> Result<Vec<(Key, u32, Vec<u8>)>, redb::StorageError> {
    by_key
        .iter()?
        .map(|entry| {
            let (k, v) = entry?;
            let (ip, meta) = v.value();
            Ok((key_of(k.value()), ip, meta.to_vec()))
        })
        .collect()
}

/// Finds the first free address after `cursor`, wrapping around to the start of the range, the
/// way CNI host-local does; `None` when every usable address is taken.
///
/// A cursor outside the usable range (none yet, or left by another subnet) starts the search at
/// the first usable address. Runs of taken addresses are skipped by walking `by_ip` in order, so
/// the cost is one range scan, not one lookup per address.
pub(crate) fn next_free(
    by_ip: &impl ReadableTable<u32, KeyCol>,
    span: &Span,
    cursor: Option<u32>,
) -> Result<Option<u32>, redb::StorageError> {
    let (first, last) = (span.first(), span.last());
    let start = match cursor {
        Some(c) if (first..last).contains(&c) => c + 1,
        _ => first,
    };
    if let Some(ip) = first_gap(by_ip, start, last)? {
        return Ok(Some(ip));
    }
    if start > first {
        return first_gap(by_ip, first, start - 1);
    }
    Ok(None)
}

/// The lowest address of `lo..=hi` absent from `by_ip`.
fn first_gap(
    by_ip: &impl ReadableTable<u32, KeyCol>,
    lo: u32,
    hi: u32,
) -> Result<Option<u32>, redb::StorageError> {
    let mut candidate = lo;
    for entry in by_ip.range(lo..=hi)? {
        let taken = entry?.0.value();
        if taken > candidate {
            break;
        }
        if candidate == hi {
            return Ok(None);
        }
        candidate = taken + 1;
    }
    Ok(Some(candidate))
}

/// Verifies that `by_key` and `by_ip` describe the same bijection and that every address is
/// usable in `span`; returns the number of allocations.
pub(crate) fn check(
    db: &Path,
    by_key: &impl ReadableTable<KeyCol, AllocCol>,
    by_ip: &impl ReadableTable<u32, KeyCol>,
    span: &Span,
) -> Result<u64, Error> {
    let corrupt = |detail: String| Error::Corrupt {
        db: db.to_path_buf(),
        detail,
    };
    let read = store_err(db, "check consistency");
    let mut count = 0u64;
    for entry in by_key.iter().map_err(read)? {
        let (k, v) = entry.map_err(store_err(db, "check consistency"))?;
        let key = key_of(k.value());
        let ip = v.value().0;
        if !span.is_usable(ip) {
            return Err(corrupt(format!(
                "by_key: {key} holds {}, which is not a usable address of {}",
                Ipv4Addr::from(ip),
                span.net()
            )));
        }
        match owner(by_ip, ip).map_err(store_err(db, "check consistency"))? {
            Some(o) if o == key => {}
            Some(o) => {
                return Err(corrupt(format!(
                    "by_key: {key} holds {}, but by_ip gives it to {o}",
                    Ipv4Addr::from(ip)
                )))
            }
            None => {
                return Err(corrupt(format!(
                    "by_key: {key} holds {}, but by_ip has no entry for it",
                    Ipv4Addr::from(ip)
                )))
            }
        }
        count += 1;
    }
    for entry in by_ip.iter().map_err(store_err(db, "check consistency"))? {
        let (ip, k) = entry.map_err(store_err(db, "check consistency"))?;
        let (ip, key) = (ip.value(), key_of(k.value()));
        match lookup(by_key, &key).map_err(store_err(db, "check consistency"))? {
            Some((held, _)) if held == ip => {}
            Some((held, _)) => {
                return Err(corrupt(format!(
                    "by_ip: {} belongs to {key}, but by_key says {key} holds {}",
                    Ipv4Addr::from(ip),
                    Ipv4Addr::from(held)
                )))
            }
            None => {
                return Err(corrupt(format!(
                    "by_ip: {} belongs to {key}, which by_key does not know",
                    Ipv4Addr::from(ip)
                )))
            }
        }
    }
    Ok(count)
}

/// The three tables, open in one write transaction.
///
/// Mutations go through methods that keep `by_key` and `by_ip` in step and mark the transaction
/// dirty, so that a pool operation that changed nothing aborts instead of paying for a commit.
pub(crate) struct Tables<'txn> {
    db: &'txn Path,
    pub(crate) by_key: Table<'txn, KeyCol, AllocCol>,
    pub(crate) by_ip: Table<'txn, u32, KeyCol>,
    pub(crate) meta: Table<'txn, &'static str, u64>,
    pub(crate) dirty: bool,
}

impl<'txn> Tables<'txn> {
    /// Opens (creating when absent) the tables in `txn`.
    pub(crate) fn open(txn: &'txn WriteTransaction, db: &'txn Path) -> Result<Self, Error> {
        let open = |what| store_err(db, what);
        Ok(Tables {
            db,
            by_key: txn.open_table(BY_KEY).map_err(open("open table by_key"))?,
            by_ip: txn.open_table(BY_IP).map_err(open("open table by_ip"))?,
            meta: txn.open_table(META).map_err(open("open table meta"))?,
            dirty: false,
        })
    }

    fn err<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> Error + 'txn {
        store_err(self.db, op)
    }

    /// Reports an inconsistency found while changing the tables.
    pub(crate) fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            db: self.db.to_path_buf(),
            detail,
        }
    }

    /// Reads one key's `(ip, meta)`.
    pub(crate) fn lookup(&self, key: &Key) -> Result<Option<(u32, Vec<u8>)>, Error> {
        lookup(&self.by_key, key).map_err(self.err("read by_key"))
    }

    /// Reads which key holds `ip`.
    pub(crate) fn owner(&self, ip: u32) -> Result<Option<Key>, Error> {
        owner(&self.by_ip, ip).map_err(self.err("read by_ip"))
    }

    /// Reads a `meta` entry.
    pub(crate) fn meta(&self, name: &str) -> Result<Option<u64>, Error> {
        Ok(self
            .meta
            .get(name)
            .map_err(self.err("read meta"))?
            .map(|g| g.value()))
    }

    /// Writes a `meta` entry.
    pub(crate) fn set_meta(&mut self, name: &str, value: u64) -> Result<(), Error> {
        self.dirty = true;
        self.meta
            .insert(name, value)
            .map_err(store_err(self.db, "write meta"))?;
        Ok(())
    }

    /// Removes a `meta` entry.
    pub(crate) fn clear_meta(&mut self, name: &str) -> Result<(), Error> {
        self.dirty = true;
        self.meta
            .remove(name)
            .map_err(store_err(self.db, "write meta"))?;
        Ok(())
    }

    /// Reads the subnet recorded in `meta`, if any.
    pub(crate) fn subnet(&self) -> Result<Option<Ipv4Net>, Error> {
        let (addr, len) = match (self.meta(M_SUBNET_ADDR)?, self.meta(M_SUBNET_PREFIX)?) {
            (None, None) => return Ok(None),
            (Some(a), Some(l)) => (a, l),
            _ => return Err(self.corrupt("meta holds half a subnet".into())),
        };
        let net = u32::try_from(addr)
            .ok()
            .zip(u8::try_from(len).ok())
            .and_then(|(a, l)| Ipv4Net::new(Ipv4Addr::from(a), l).ok());
        net.map(Some).ok_or_else(|| {
            self.corrupt(format!(
                "meta holds subnet address {addr} and prefix {len}, which is no IPv4 subnet"
            ))
        })
    }

    /// Records the subnet in `meta`.
    pub(crate) fn set_subnet(&mut self, net: Ipv4Net) -> Result<(), Error> {
        self.set_meta(M_SUBNET_ADDR, u64::from(u32::from(net.addr())))?;
        self.set_meta(M_SUBNET_PREFIX, u64::from(net.prefix_len()))
    }

    /// Reads the round-robin cursor; a value that is no IPv4 address reads as none.
    pub(crate) fn cursor(&self) -> Result<Option<u32>, Error> {
        Ok(self.meta(M_CURSOR)?.and_then(|c| u32::try_from(c).ok()))
    }

    /// Inserts or overwrites `key`'s allocation, in both directions.
    ///
    /// The caller has checked that `ip` is free or already `key`'s.
    pub(crate) fn insert(&mut self, key: &Key, ip: u32, meta: &[u8]) -> Result<(), Error> {
        self.dirty = true;
        self.by_key
            .insert(key_col(key), (ip, meta))
            .map_err(store_err(self.db, "write by_key"))?;
        self.by_ip
            .insert(ip, key_col(key))
            .map_err(store_err(self.db, "write by_ip"))?;
        Ok(())
    }

    /// Removes `key`'s allocation from both tables, returning `(ip, meta)`.
    pub(crate) fn remove(&mut self, key: &Key) -> Result<Option<(u32, Vec<u8>)>, Error> {
        let Some((ip, meta)) = self
            .by_key
            .remove(key_col(key))
            .map_err(store_err(self.db, "write by_key"))?
            .map(|g| {
                let (ip, meta) = g.value();
                (ip, meta.to_vec())
            })
        else {
            return Ok(None);
        };
        self.dirty = true;
        let owner = self
            .by_ip
            .remove(ip)
            .map_err(store_err(self.db, "write by_ip"))?
            .map(|g| key_of(g.value()));
        if owner.as_ref() != Some(key) {
            let found = owner.map_or_else(|| "nothing".to_string(), |o| o.to_string());
            return Err(self.corrupt(format!(
                "by_key: {key} holds {}, but by_ip gives it to {found}",
                Ipv4Addr::from(ip)
            )));
        }
        Ok(Some((ip, meta)))
    }
}
